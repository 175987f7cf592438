"""Edges of the integer region: quantize the float input, dequantize the integer output."""
from __future__ import annotations

import numpy as np
import torch

from ..qmath import round_half_away
from ..wide import container_dtype
from . import RUN, SIM, register
from .context import KernelContext


@register("quantize", RUN)
def quantize_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    qp = ctx.qp(instr.output)
    v = inputs[0].astype(np.float32) / np.float32(qp.scale)  # float32 division, as runtimes do
    r = round_half_away(v) if ctx.half_away else np.rint(v)
    return np.clip(r.astype(np.int64) + int(qp.zero_point), qp.qmin, qp.qmax).astype(container_dtype(qp.bits))


@register("quantize", SIM)
def quantize_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    return ctx.fq(inputs[0], instr.output)


@register("dequantize", RUN)
def dequantize_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    qp = ctx.qp(instr.inputs[0])
    return ((inputs[0].astype(np.int32) - int(qp.zero_point)).astype(np.float32) * np.float32(qp.scale)).astype(np.float32)


@register("dequantize", SIM)
def dequantize_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    return inputs[0]
