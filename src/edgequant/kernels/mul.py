"""Element-wise product of two activation tensors, with broadcasting of size-1 dims (the
Squeeze-and-Excitation gate: (N, C, 1, 1) * (N, C, H, W)).

Integer form (TFLite MUL, int8): ``acc = (a - za) * (b - zb)`` exactly in int32, requantized by
``M = s_a * s_b / s_y`` as (Q31 M0, shift) -- gemmlowp rounding, rounded once for outputs narrower
than 8 bits like every requantization (``qmath.requant_rounding``) -- or by the float32 multiplier
and round-half-even in the onnxruntime mode (ONNX Runtime's QLinearMul), plus the output zero
point, saturated.
"""
from __future__ import annotations

import numpy as np

from .. import qmath
from . import RUN, SIM, register
from .context import KernelContext, act_bounds


@register("mul", RUN)
def mul_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    za, zb = int(ctx.qp(instr.inputs[0]).zero_point), int(ctx.qp(instr.inputs[1]).zero_point)
    acc = (inputs[0].astype(np.int64) - za) * (inputs[1].astype(np.int64) - zb)  # |acc| <= 2^16
    lo, hi = act_bounds(instr, ctx)
    a = instr.arrays
    y = qmath.requantize(acc, m0=a["m0"][0], shift=a["shift"][0], real_multiplier=a["multiplier"][0],
                         zero_point=int(ctx.qp(instr.output).zero_point), qmin=lo, qmax=hi,
                         rounding=ctx.requant_rounding(instr))
    return y.astype(np.int8)


@register("mul", SIM)
def mul_sim(instr, inputs, ctx: KernelContext):
    lo, hi = act_bounds(instr, ctx)
    return ctx.fq(inputs[0] * inputs[1], instr.output, lo, hi)


@register("mul_f", RUN)
def mul_f_run(instr, inputs, ctx) -> np.ndarray:
    return (inputs[0] * inputs[1]).astype(np.float32)


@register("mul_f", SIM)
def mul_f_sim(instr, inputs, ctx):
    return inputs[0] * inputs[1]
