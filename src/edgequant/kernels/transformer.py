"""Transformer ops: matmul of two activations, softmax and layernorm over the last axis, transpose.

Integer forms (the "gemmlowp" mode, integer-only):

* ``matmul``: ``acc = sum_k (a - za)(b - zb)`` exactly (int32 range), requantized by
  ``M = alpha * s_a * s_b / s_y`` with the shared ``requantize_accumulator`` (per tensor). With a
  16-bit input (act16="all", TFLite's 16x16 BATCH_MATMUL) the accumulator is int64 (``acc64``:
  |acc| <= 65535 * 32767 * K) and the requantization ``wide.requantize_64``.
* ``softmax`` (TFLite's int8 convention: output scale ``1/2^bits``, zero point ``qmin``): per row
  ``d = x - max(x)`` in ``[-(qmax - qmin), 0]``; ``e = exp_table[-d]`` with
  ``exp_table[k] = round(2^20 * exp(-k * s_x))`` built at lowering; ``S = sum(e)`` in int64;
  ``y = qmin + floor((2 * e * 2^bits + S) / (2 * S))`` (round half up of ``p * 2^bits``), clamped.
  int16 input: one table entry per input code (65536); int16 output: bits = 16 (grid 2^-16).
* ``layernorm`` (see ``layernorm_int``): integer mean/variance, integer square root, Q12 normalised
  value, per-channel int8 gamma and int32 beta, per-channel requantization.
* ``transpose``: data movement only.

The "onnxruntime" mode computes what ONNX Runtime runs for the exported ``DQ -> op -> Q``:
ORT fuses ``DQ -> MatMul -> Q`` into QLinearMatMul (int32 accumulator, float32 multiplier,
round half even: the shared requantization's onnxruntime branch) and ``DQ -> Softmax -> Q`` into
its QLinearSoftmax (a float32 exp table and float32 row sums, reproduced in ``_ort_softmax``);
it runs ``DQ -> LayerNormalization -> Q`` as exported, in float64 at either width (``wide_ort.layernorm``: a
float32 LayerNorm flipped single LSBs against ORT's own summation order). With a 16-bit input or output ORT has no integer kernel and runs the float32
op between DQ and Q; so does that mode (``wide_ort``). ``SIM`` is the float64 fake-quant twin of every instruction.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import RUN, SIM, gemm, register, wide_ort
from .context import KernelContext
from ..wide import container_dtype
from .conv import requantize_accumulator

EXP_FRAC_BITS = 20  # softmax exp table in Q20: sum of up to 2^43 rows' entries fits int64
LN_SQRT_FRAC_BITS = 16  # F: the integer square root carries 16 fractional bits
LN_FRAC_BITS = 12  # G: the normalised value is Q12 (|n| <= sqrt(D), n_q * gamma_q fits int32)
# int16 output: Q12 would put up to 2 LSB of error on the int16 grid; Q16 with an int64 accumulator
LN_WIDE_FRAC_BITS = 16


# -- matmul ---------------------------------------------------------------------------------------
@register("matmul", RUN)
def matmul_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    if wide_ort.applies(instr, ctx):  # 16-bit: ONNX Runtime's DQ -> float32 MatMul -> Q
        return wide_ort.matmul(instr, inputs, ctx)
    za, zb = int(ctx.qp(instr.inputs[0]).zero_point), int(ctx.qp(instr.inputs[1]).zero_point)
    dt = np.int32 if instr.attrs.get("acc64") else np.int16  # int16 inputs: x - z spans 17 bits
    a = inputs[0].astype(dt) - za  # (..., M, K) in [-255, 255] (int8) or [-65535, 65535] (int16)
    b = inputs[1].astype(dt) - zb  # (..., K, N)
    acc = gemm.exact_matmul(a, b)  # (..., M, N) int64, exact
    return requantize_accumulator(instr, acc, ctx)


@register("matmul", SIM)
def matmul_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    return ctx.fq(torch.matmul(inputs[0], inputs[1]) * float(instr.attrs.get("alpha", 1.0)), instr.output)


@register("matmul_f", RUN)
def matmul_f_run(instr, inputs, ctx) -> np.ndarray:
    y = np.matmul(inputs[0].astype(np.float32), inputs[1].astype(np.float32))
    alpha = float(instr.attrs.get("alpha", 1.0))
    return (y * np.float32(alpha) if alpha != 1.0 else y).astype(np.float32)


@register("matmul_f", SIM)
def matmul_f_sim(instr, inputs, ctx) -> torch.Tensor:
    return torch.matmul(inputs[0], inputs[1]) * float(instr.attrs.get("alpha", 1.0))


# -- softmax --------------------------------------------------------------------------------------
def softmax_exp_table(s_x: float, levels: int) -> np.ndarray:
    """int32 ``round(2^20 * exp(-k * s_x))`` for k = 0 .. levels-1 (k = max - x)."""
    k = np.arange(levels, dtype=np.float64)
    return np.round(np.exp(-k * float(np.float32(s_x))) * (1 << EXP_FRAC_BITS)).astype(np.int32)


def ort_softmax_table(s_x: float, d: int) -> np.ndarray:
    """ONNX Runtime's QLinearSoftmax table (contrib_ops/cpu/quantization/qlinear_softmax.cc, float
    variant): entry i = float32(exp((i - 255 + shift) * s_x)), shift = max(0, ln(FLT_MAX / D) - 5) / s_x,
    so one row's float32 sum cannot overflow."""
    s = float(np.float32(s_x))
    shift = max(0.0, math.log(float(np.finfo(np.float32).max) / d) - 5.0) / s
    return np.array([math.exp((i - 255 + shift) * s) for i in range(256)], np.float64).astype(np.float32)


def _ort_softmax(x: np.ndarray, table: np.ndarray, s_y: float, zy: int, qmin: int, qmax: int) -> np.ndarray:
    """QLinearSoftmax on the uint8 export (values x + 128): per row, the table shifted so the row
    max sits at 255, a float32 sum in element order, ``nearbyint(e * floor(1/s_y) / sum)`` + zp."""
    d = x.astype(np.int64) - x.max(axis=-1, keepdims=True).astype(np.int64)  # (..., D) <= 0
    e = table[255 + d]  # float32
    total = np.cumsum(e, axis=-1, dtype=np.float32)[..., -1:]  # sequential float32 sum, like the C loop
    y_scale = np.float32(np.floor(np.float32(1.0) / np.float32(s_y)))
    q = np.rint((e * y_scale) / total).astype(np.int64) + (zy + 128)  # uint8 zero point
    return np.clip(np.minimum(q, 255) - 128, qmin, qmax).astype(np.int8)


def softmax_from_exp(e: np.ndarray, instr, qy) -> np.ndarray:
    """Q20 exps (int64, masked keys 0) -> probabilities on the output grid 2^-bits:
    ``qmin + floor((2 * e * 2^bits + S) / (2 * S))``, ``S`` the row sum (< 2^37 * 2^16 fits int64)."""
    total = e.sum(axis=-1, keepdims=True)  # >= 2^20 (the max entry is exp(0))
    steps = int(instr.attrs["out_levels"])  # 2^bits = 1 / s_y
    q = (2 * e * steps + total) // (2 * total)  # round half up of p * 2^bits (p >= 0)
    return np.clip(q + int(qy.zero_point), qy.qmin, qy.qmax).astype(container_dtype(qy.bits))


@register("softmax", RUN)
def softmax_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    x = inputs[0]
    qy = ctx.qp(instr.output)
    if wide_ort.applies(instr, ctx):  # 16-bit: ONNX Runtime's DQ -> float32 Softmax -> Q
        return wide_ort.softmax(instr, x, ctx)
    if ctx.rounding == "onnxruntime" and "table_ort" in instr.arrays:
        return _ort_softmax(x, instr.arrays["table_ort"], float(qy.scale), int(qy.zero_point), qy.qmin, qy.qmax)
    k = x.max(axis=-1, keepdims=True).astype(np.int64) - x.astype(np.int64)  # (..., D) in [0, qmax - qmin]
    return softmax_from_exp(instr.arrays["exp_table"].astype(np.int64)[k], instr, qy)  # Q20 exps


@register("softmax", SIM)
def softmax_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    return ctx.fq(torch.softmax(inputs[0], dim=-1), instr.output)


@register("softmax_f", RUN)
def softmax_f_run(instr, inputs, ctx) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.ascontiguousarray(inputs[0], np.float32)), dim=-1).numpy()


@register("softmax_f", SIM)
def softmax_f_sim(instr, inputs, ctx) -> torch.Tensor:
    return torch.softmax(inputs[0], dim=-1)


# -- layernorm ------------------------------------------------------------------------------------
def layernorm_normalised(xc: np.ndarray, eps_fixed: int, frac_bits: int = LN_FRAC_BITS) -> np.ndarray:
    """Q12 (``frac_bits`` = G) normalised value of integer rows ``xc = x - zx`` (int64, (..., D)), integer-only.

    With ``s = sum(xc)``, ``u = D * xc - s`` (= D * (xc - mean), exact) and ``V = sum(u^2)``
    (= D^3 * var_q), the normalised value is ``n = u / sqrt(V / D + D^2 * eps_q)`` where
    ``eps_q = eps / s_x^2``. In integers, F = 16, G = 12:
    ``R = isqrt(floor(V * 2^(2F) / D) + eps_fixed)`` with ``eps_fixed = round(D^2 eps_q 2^(2F))``
    (so ``R ~ 2^F * sqrt(V / D + D^2 eps_q)``; Python integers, exact), then
    ``n_q = round_half_away(u * 2^(F+G) / R)`` by integer division.
    """
    d = xc.shape[-1]
    u = d * xc - xc.sum(axis=-1, keepdims=True)  # |u| <= D * 255 * 2
    big = int(np.abs(u).max(initial=0)) ** 2 * d >= 1 << 62  # int16 inputs at large D
    v = ((u.astype(object) ** 2).sum(axis=-1, keepdims=True) if big  # exact, slow, rare
         else (u * u).sum(axis=-1, keepdims=True))  # < 2^63 for int8 inputs and D < 2^14
    two_f = 2 * LN_SQRT_FRAC_BITS
    r = np.array([math.isqrt((int(vi) << two_f) // d + eps_fixed) for vi in v.reshape(-1)], dtype=object)
    r = r.astype(np.int64).reshape(v.shape)  # < 2^47
    r = np.maximum(r, 1)
    sh = LN_SQRT_FRAC_BITS + frac_bits
    if int(np.abs(u).max(initial=0)).bit_length() + sh + 1 > 62:  # int16 inputs at very large D: exact, slow
        num, r = np.abs(u).astype(object) << sh, r.astype(object)
        n = ((2 * num + r) // (2 * r)).astype(np.int64)
    else:
        num = np.abs(u) << sh  # < 2^47 (int8, Q12); < 2^59 (int16 at D = 384, Q16)
        n = (2 * num + r) // (2 * r)  # round half away of |u| * 2^(F+G) / R
    return np.where(u < 0, -n, n)


@register("layernorm", RUN)
def layernorm_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    """Integer layer norm: ``layernorm_normalised`` (Q12 ``n_q``), then per channel c
    ``acc = n_q * gamma_q[c] + beta_q[c]`` (int8 gamma with scale ``g_scale[c]``, int32 beta with
    scale ``g_scale[c] * 2^-12``) requantized by ``M_c = g_scale[c] * 2^-12 / s_y`` to the
    calibrated output qparams (the shared per-channel requantization along the last axis).
    An int16 output uses Q16 (attr ``frac_bits``), an int64 beta and accumulator (``acc64``)."""
    x = inputs[0]
    qx = ctx.qp(instr.inputs[0])
    if ctx.rounding == "onnxruntime":  # DQ -> float64 LayerNormalization -> float32 -> Q, as exported (8 or 16 bits)
        return wide_ort.layernorm(instr, x, ctx)
    n_q = layernorm_normalised(x.astype(np.int64) - int(qx.zero_point), int(instr.attrs["eps_fixed"]),
                               int(instr.attrs.get("frac_bits", LN_FRAC_BITS)))
    acc = n_q * instr.arrays["gamma"].astype(np.int64)  # bias (beta_q) is added by the requantization
    return requantize_accumulator(instr, acc, ctx, axis=-1)


@register("layernorm", SIM)
def layernorm_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    x = inputs[0]
    g = torch.as_tensor(instr.arrays["gamma_f"], dtype=x.dtype)
    b = torch.as_tensor(instr.arrays["beta_f"], dtype=x.dtype)
    return ctx.fq(F.layer_norm(x, (x.shape[-1],), g, b, float(instr.attrs["eps"])), instr.output)


@register("layernorm_f", RUN)
def layernorm_f_run(instr, inputs, ctx) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(inputs[0], np.float32))
    return layernorm_f_sim(instr, [x], ctx).numpy().astype(np.float32)


@register("layernorm_f", SIM)
def layernorm_f_sim(instr, inputs, ctx) -> torch.Tensor:
    x = inputs[0]
    g = torch.as_tensor(instr.arrays["gamma_f"].astype(np.float32), dtype=x.dtype)
    b = torch.as_tensor(instr.arrays["beta_f"].astype(np.float32), dtype=x.dtype)
    return F.layer_norm(x, (x.shape[-1],), g, b, float(instr.attrs["eps"]))


# -- transpose (dtype-generic) ----------------------------------------------------------------------
@register("transpose", RUN)
def transpose_run(instr, inputs, ctx) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(inputs[0], tuple(instr.attrs["perm"])))


@register("transpose", SIM)
def transpose_sim(instr, inputs, ctx) -> torch.Tensor:
    return inputs[0].permute(*instr.attrs["perm"])

