"""The "onnxruntime" rounding mode of instructions that touch a 16-bit (act16) tensor.

Why float: ONNX Runtime's CPU provider has no int16 integer kernels (QGemm, QLinearMatMul,
QLinearSoftmax, ... are 8-bit), so the exported QDQ graph (``export/onnx``) runs every node with an
int16 input or output as ``DequantizeLinear -> float op -> QuantizeLinear``. This module computes
exactly that: dequantize in float32 (``(q - z) * s``), the op, then QuantizeLinear (``x / s`` in
float32, round half to even, saturate; ``qmath.quantize_in``) clamped to the fused activation's bounds.

Why float64 for ``F64_OPS`` (MatMul, Softmax, LayerNormalization): a float32 sum is ordered
differently by MLAS and by NumPy, so the two disagree by one LSB where a sum lands near a rounding
tie -- and the 16-bit grids are fine enough that later layers amplify one LSB (a score LSB moves a
2^-16 probability by ~50 LSB; measured on all-MiniLM-L6-v2: per instruction <= 1 LSB, end to end
129 LSB with float32 ops). The export casts the dequantized float32 values to float64, runs the op
there and casts the result back to float32 once; both sides then agree unless a float64 result
lies within ~1e-16 of a float32 rounding boundary. A 16-bit conv or linear is exported as its exact
integer accumulator (the input's bytes through two float32 convolutions -- ONNX Runtime has no
float64 Conv -- or two u8s8 MatMulInteger) rescaled in float64 (``rescale``). 16-bit lookup tables are exported as the table itself (``table_ort``, a Gather).

The default ("gemmlowp") mode keeps the integer 16x8 / 16x16 forms (TFLite's), unchanged.
"""
from __future__ import annotations

import numpy as np
from .. import qmath
from ..wide import container_dtype
from .context import KernelContext, act_bounds


F64_OPS = frozenset({"matmul", "softmax", "softmax_masked", "layernorm"})


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


def conv_scale(instr, s_in) -> np.ndarray:
    """float64 of the float32 ``s_in * s_w[c]`` (the bias scale): the exact conv accumulator's rescale."""
    return (np.float32(s_in) * np.asarray(instr.arrays["w_scale"], np.float32)).astype(np.float64)


def rescale(instr, acc: np.ndarray, ctx: KernelContext) -> np.ndarray:
    """Conv or linear (2-D) with a 16-bit input or output: ``float32((acc + b_q) * float64(s_in * s_w[c]))`` -> Q, per
    output channel (axis 1), ``acc`` the exact integer accumulator. Why not DQ -> float32 Conv -> Q:
    ONNX Runtime has no float64 Conv and float32 sums differ by runtime (see the module docstring);
    the export computes the exact accumulator as two float32 convolutions of the input's bytes
    (``kernels.conv.byte_split_slices``) and this float64 rescale, so both sides agree."""
    cs = (1, -1) + (1,) * (acc.ndim - 2)
    a = np.asarray(acc, np.float64)
    if "bias" in instr.arrays:
        a = a + instr.arrays["bias"].astype(np.float64).reshape(cs)
    y = a * conv_scale(instr, ctx.qp(instr.inputs[0]).scale).reshape(cs)
    return quantize(y.astype(np.float32), instr, ctx)


def matmul(instr, inputs, ctx: KernelContext) -> np.ndarray:
    """DQ(a) (scale ``float32(s_a * alpha)``, as exported) @ DQ(b) in float32 -> Q."""
    from ..lower.transformer import matmul_scale_f32

    qa, qb = ctx.qp(instr.inputs[0]), ctx.qp(instr.inputs[1])
    alpha = float(instr.attrs.get("alpha", 1.0))
    sa = np.float32(qa.scale) if alpha == 1.0 else matmul_scale_f32(qa.scale, alpha)
    y = np.matmul(dequantize(inputs[0], qa, sa).astype(np.float64), dequantize(inputs[1], qb).astype(np.float64))
    return quantize(y.astype(np.float32), instr, ctx)


LOWEST = np.finfo(np.float32).min  # the exported Where puts this on masked keys: exp(lowest - max) = 0


def softmax(instr, x: np.ndarray, ctx: KernelContext, keep: np.ndarray | None = None) -> np.ndarray:
    """DQ -> [Where(keep, x, lowest)] -> Softmax(axis=-1) -> Q. 16-bit: in float64 (``F64_OPS``).
    8-bit (the masked softmax, which no fused kernel takes): ONNX Runtime's float32 Softmax,
    ``e = exp(x - max)``, ``y = e * (1 / sum(e))`` (its exp may differ by an ulp: <= 1 LSB)."""
    dt = np.float64 if applies(instr, ctx) else np.float32
    xf = dequantize(x, ctx.qp(instr.inputs[0])).astype(dt)
    if keep is not None:
        xf = np.where(keep, xf, dt(LOWEST)).astype(dt)
    e = np.exp(xf - xf.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True) if dt is np.float64 else e * (np.float32(1.0) / e.sum(axis=-1, keepdims=True, dtype=np.float32))
    return quantize(y.astype(np.float32), instr, ctx)


def layernorm(instr, x: np.ndarray, ctx: KernelContext) -> np.ndarray:
    """DQ -> float64 LayerNormalization over the last axis (float64 gamma/beta) -> float32 -> Q."""
    xf = dequantize(x, ctx.qp(instr.inputs[0])).astype(np.float64)
    mean = xf.mean(axis=-1, keepdims=True)
    var = (xf * xf).mean(axis=-1, keepdims=True) - mean * mean
    y = (xf - mean) / np.sqrt(var + float(np.float32(instr.attrs["eps"])))
    y = y * instr.arrays["gamma_f"].astype(np.float32).astype(np.float64) + instr.arrays["beta_f"].astype(np.float32).astype(np.float64)
    return quantize(y.astype(np.float32), instr, ctx)
