"""The "onnxruntime" rounding mode of instructions that touch a 16-bit (act16) tensor.

Why float: ONNX Runtime's CPU provider has no int16 integer kernels (QGemm, QLinearMatMul,
QLinearSoftmax, ... are 8-bit), so the exported QDQ graph (``export/onnx``) runs every node with an
int16 input or output as ``DequantizeLinear -> float32 op -> QuantizeLinear``. This module computes
exactly that: dequantize in float32 (``(q - z) * s``), the float32 op (Gemm/Conv with the
dequantized int8 weights and the float32 bias ``wide.bias_f32``, MatMul, Softmax), then
QuantizeLinear (``x / s`` in float32, round half to even, saturate; ``qmath.quantize_in``) clamped
to the fused activation's bounds. Only float summation order differs from ONNX Runtime's MLAS, so
an output may differ by one LSB where a float32 sum lands on a rounding tie.

The default ("gemmlowp") mode keeps the integer 16x8 / 16x16 forms (TFLite's), unchanged.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import qmath
from ..graph_exec import conv_float
from ..wide import bias_f32, container_dtype
from .context import KernelContext, act_bounds


def applies(instr, ctx: KernelContext) -> bool:
    """True in the onnxruntime mode for an instruction with an int16 input or output."""
    return ctx.rounding == "onnxruntime" and any(
        ctx.tensors[t].dtype == "int16" for t in (*instr.inputs, instr.output) if t in ctx.tensors)


def dequantize(x: np.ndarray, qp: qmath.QParams, scale: np.float32 | None = None) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q - z) * s`` in float32 (``scale`` overrides ``s``, e.g. ``s * alpha``)."""
    s = np.float32(qp.scale) if scale is None else np.float32(scale)
    return (np.asarray(x).astype(np.int32) - int(qp.zero_point)).astype(np.float32) * s


def quantize(y: np.ndarray, instr, ctx: KernelContext) -> np.ndarray:
    """ONNX QuantizeLinear to the output's qparams, clamped to the fused activation's bounds."""
    qy = ctx.qp(instr.output)
    lo, hi = act_bounds(instr, ctx)
    q = qmath.quantize_in(np.asarray(y, np.float32), qy, np.float32)
    return np.clip(q, lo, hi).astype(container_dtype(qy.bits))


def _weights_f32(instr) -> np.ndarray:
    """DequantizeLinear of the int8 weights per output channel (axis 0), float32, cached."""
    cache = instr.__dict__.setdefault("_cache", {})
    if "w_dq" not in cache:
        w = instr.arrays["weight"]
        ws = np.asarray(instr.arrays["w_scale"], np.float32).reshape((-1,) + (1,) * (w.ndim - 1))
        cache["w_dq"] = (w.astype(np.float32) * ws).astype(np.float32)
    return cache["w_dq"]


def gemm(instr, x: np.ndarray, ctx: KernelContext) -> np.ndarray:
    """Linear (2-D input) or conv: DQ -> Gemm/Conv (float32, float32 bias) -> Q."""
    qx = ctx.qp(instr.inputs[0])
    xf = dequantize(x, qx)
    w = _weights_f32(instr)
    b = None
    if "bias" in instr.arrays:
        b = bias_f32(instr.arrays["bias"], np.float32(qx.scale) * np.asarray(instr.arrays["w_scale"], np.float32))
    if instr.op == "linear":
        y = xf @ w.T
        if b is not None:
            y += b
    else:
        with torch.no_grad():
            y = conv_float(torch.from_numpy(np.ascontiguousarray(xf)), torch.from_numpy(w),
                           None if b is None else torch.from_numpy(b), instr.attrs).numpy()
    return quantize(y, instr, ctx)


def matmul(instr, inputs, ctx: KernelContext) -> np.ndarray:
    """DQ(a) (scale ``float32(s_a * alpha)``, as exported) @ DQ(b) in float32 -> Q."""
    from ..lower.transformer import matmul_scale_f32

    qa, qb = ctx.qp(instr.inputs[0]), ctx.qp(instr.inputs[1])
    alpha = float(instr.attrs.get("alpha", 1.0))
    sa = np.float32(qa.scale) if alpha == 1.0 else matmul_scale_f32(qa.scale, alpha)
    return quantize(np.matmul(dequantize(inputs[0], qa, sa), dequantize(inputs[1], qb)), instr, ctx)


LOWEST = np.finfo(np.float32).min  # the exported Where puts this on masked keys: exp(lowest - max) = 0


def softmax(instr, x: np.ndarray, ctx: KernelContext, keep: np.ndarray | None = None) -> np.ndarray:
    """DQ -> [Where(keep, x, lowest)] -> Softmax(axis=-1) -> Q; ONNX Runtime's Softmax in float32:
    ``e = exp(x - max)``, ``y = e * (1 / sum(e))``."""
    xf = dequantize(x, ctx.qp(instr.inputs[0]))
    if keep is not None:
        xf = np.where(keep, xf, LOWEST).astype(np.float32)
    e = np.exp(xf - xf.max(axis=-1, keepdims=True), dtype=np.float32)
    y = e * (np.float32(1.0) / e.sum(axis=-1, keepdims=True, dtype=np.float32))
    return quantize(y, instr, ctx)
