"""Add, Cat, Clamp, Pad, Reshape.

Integer Add follows TFLite's scheme: both inputs shifted left by 20 bits, rescaled to a common
scale (2 * max input scale) with Q31 multipliers, summed, rescaled to the output. ONNX Runtime's
QLinearAdd instead multiplies by float32 scale ratios and rounds half to even.

The "onnxruntime" rounding mode reproduces what ONNX Runtime's x86-64 CPU kernels compute for the
exported graph (uint8 activations = the int8 program values + 128): QLinearAdd as MLAS's AVX2
kernel evaluates it, ``fma(a, rA, fma(b, rB, zc - fma(rA, za, rB * zb)))`` in float32 on the uint8
values, and QLinearConcat as a 256-entry table ``QuantizeLinear(s_x * (x - zx))``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import qmath
from ..wide import container_dtype
from . import RUN, SIM, native, register
from ..graph_exec import batch_broadcast
from .context import KernelContext, act_bounds


def add_multipliers(s_a: float, s_b: float, s_out: float, left_shift: int = 20) -> dict:
    """TFLite add.cc requantization parameters (doubles from float32 scales)."""
    twice_max = 2.0 * max(float(np.float32(s_a)), float(np.float32(s_b)))
    real_a = float(np.float32(s_a)) / twice_max
    real_b = float(np.float32(s_b)) / twice_max
    real_out = twice_max / ((1 << left_shift) * float(np.float32(s_out)))
    out = {"left_shift": left_shift}
    for key, real in (("a", real_a), ("b", real_b), ("out", real_out)):
        m0, sh = qmath.quantize_multiplier(real)
        out[f"m0_{key}"], out[f"shift_{key}"] = int(m0), int(sh)
    out["ratio_a"] = float(np.float32(s_a) / np.float32(s_out))
    out["ratio_b"] = float(np.float32(s_b) / np.float32(s_out))
    return out


@register("add", RUN)
def add_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    a_qp, b_qp, y_qp = ctx.qp(instr.inputs[0]), ctx.qp(instr.inputs[1]), ctx.qp(instr.output)
    at = instr.attrs
    lo, hi = act_bounds(instr, ctx)
    if ctx.rounding == "gemmlowp":  # all three rescalings round once where the instruction says so
        single = ctx.requant_rounding(instr) == "single"
        fused = native.add(inputs[0], inputs[1], int(a_qp.zero_point), int(b_qp.zero_point), int(y_qp.zero_point),
                           at, lo, hi, single)
        if fused is not None:  # the same arithmetic in one pass (same-shape int8 inputs)
            return fused
        xa = inputs[0].astype(np.int64) - int(a_qp.zero_point)
        xb = inputs[1].astype(np.int64) - int(b_qp.zero_point)
        mul = qmath.multiply_by_quantized_multiplier_single if single else qmath.multiply_by_quantized_multiplier
        sa = mul(xa << at["left_shift"], at["m0_a"], at["shift_a"])
        sb = mul(xb << at["left_shift"], at["m0_b"], at["shift_b"])
        y = mul(sa + sb, at["m0_out"], at["shift_out"])
    elif max(a_qp.bits, b_qp.bits, y_qp.bits) > 8:  # no QLinearAdd at 16 bits: DQ -> Add -> Q in float32
        fa = (inputs[0].astype(np.int32) - int(a_qp.zero_point)).astype(np.float32) * np.float32(a_qp.scale)
        fb = (inputs[1].astype(np.int32) - int(b_qp.zero_point)).astype(np.float32) * np.float32(b_qp.scale)
        y = np.rint((fa + fb) / np.float32(y_qp.scale)).astype(np.int64)
    else:
        y = _ort_qlinear_add(inputs[0], inputs[1], int(a_qp.zero_point), int(b_qp.zero_point),
                             np.float32(at["ratio_a"]), np.float32(at["ratio_b"]), int(y_qp.zero_point))
        return np.clip(y, lo, hi).astype(np.int8)
    return np.clip(y + int(y_qp.zero_point), lo, hi).astype(container_dtype(y_qp.bits))


def _fma_f32(x, y, z) -> np.ndarray:
    """float32 fused multiply-add (one rounding): the float64 product of two float32 values is
    exact, and here the sum fits float64's 53 bits, so rounding it to float32 once is the FMA."""
    return (np.asarray(x, np.float64) * np.asarray(y, np.float64) + np.asarray(z, np.float64)).astype(np.float32)


def _ort_qlinear_add(a: np.ndarray, b: np.ndarray, za: int, zb: int, ra: np.float32, rb: np.float32,
                     zc: int) -> np.ndarray:
    """ONNX Runtime's QLinearAdd (MLAS AVX2 kernel, uint8) on int8 program values -> int64 in the
    int8 domain, saturated to [-128, 127]. ``ra``/``rb`` are float32 ``s_a/s_c`` and ``s_b/s_c``."""
    za, zb, zc = za + 128, zb + 128, zc + 128  # uint8 zero points
    fixed = np.float32(zc) - _fma_f32(ra, np.float32(za), np.float32(rb * np.float32(zb)))
    au8 = (a.astype(np.int16) + 128).astype(np.float32)
    bu8 = (b.astype(np.int16) + 128).astype(np.float32)
    y = _fma_f32(au8, ra, _fma_f32(bu8, rb, fixed))
    return np.clip(np.rint(y), 0, 255).astype(np.int64) - 128


@register("add", SIM)
def add_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    lo, hi = act_bounds(instr, ctx)
    return ctx.fq(inputs[0] + inputs[1], instr.output, lo, hi)


@register("cat", RUN)
def cat_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    inputs = batch_broadcast(inputs)  # a constant (batch 1), e.g. ViT's class token, joins every sample
    y_qp = ctx.qp(instr.output)
    parts = []
    for k, (name, x) in enumerate(zip(instr.inputs, inputs)):
        if instr.attrs["same"][k]:
            parts.append(x)
            continue
        zx = int(ctx.qp(name).zero_point)
        if ctx.rounding == "onnxruntime":  # QLinearConcat: dequantize (float32), QuantizeLinear
            deq = np.float32(ctx.qp(name).scale) * (x.astype(np.int32) - zx).astype(np.float32)
            q = np.rint(deq / np.float32(y_qp.scale)).astype(np.int64) + int(y_qp.zero_point)
            parts.append(np.clip(q, y_qp.qmin, y_qp.qmax).astype(np.int8))
            continue
        parts.append(qmath.requantize(
            x.astype(np.int64) - zx, m0=instr.arrays["m0"][k], shift=instr.arrays["shift"][k],
            real_multiplier=instr.arrays["multiplier"][k], zero_point=int(y_qp.zero_point),
            qmin=y_qp.qmin, qmax=y_qp.qmax, rounding=ctx.requant_rounding(instr)).astype(np.int8))
    return np.concatenate(parts, axis=instr.attrs["axis"])


@register("cat", SIM)
def cat_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    inputs = batch_broadcast(inputs)
    return torch.cat([x if same else ctx.fq(x, instr.output) for x, same in zip(inputs, instr.attrs["same"])],
                     instr.attrs["axis"])


@register("add_f", RUN)
def add_f_run(instr, inputs, ctx):
    y = inputs[0] + inputs[1]
    if "act" in instr.attrs:
        y = np.clip(y, *instr.attrs["act"])
    return y.astype(np.float32)


@register("add_f", SIM)
def add_f_sim(instr, inputs, ctx):
    y = inputs[0] + inputs[1]
    if "act" in instr.attrs:
        lo, hi = instr.attrs["act"]
        y = torch.clamp(y, min=None if lo == float("-inf") else lo, max=None if hi == float("inf") else hi)
    return y


@register("cat_f", RUN)
def cat_f_run(instr, inputs, ctx):
    return np.concatenate(batch_broadcast(inputs), axis=instr.attrs["axis"])


@register("cat_f", SIM)
def cat_f_sim(instr, inputs, ctx):
    return torch.cat(batch_broadcast(inputs), instr.attrs["axis"])


# -- dtype-generic: attrs hold bounds/values in the tensor's own domain; *_real for the sim --------
@register("clamp", RUN)
def clamp_run(instr, inputs, ctx):
    return np.clip(inputs[0], instr.attrs["lo"], instr.attrs["hi"]).astype(inputs[0].dtype)


@register("clamp", SIM)
def clamp_sim(instr, inputs, ctx):
    lo, hi = instr.attrs["lo_real"], instr.attrs["hi_real"]
    return torch.clamp(inputs[0], min=None if lo == float("-inf") else lo, max=None if hi == float("inf") else hi)


@register("pad", RUN)
def pad_run(instr, inputs, ctx):
    return np.pad(inputs[0], [tuple(p) for p in instr.attrs["pads"]], constant_values=instr.attrs["value"])


@register("pad", SIM)
def pad_sim(instr, inputs, ctx):
    flat = [v for pr in reversed(instr.attrs["pads"]) for v in pr]
    return F.pad(inputs[0], flat, value=instr.attrs["value_real"])


@register("reshape", RUN)
def reshape_run(instr, inputs, ctx):
    return inputs[0].reshape((inputs[0].shape[0],) + tuple(instr.attrs["shape"]))


@register("reshape", SIM)
def reshape_sim(instr, inputs, ctx):
    return inputs[0].reshape((inputs[0].shape[0],) + tuple(instr.attrs["shape"]))
