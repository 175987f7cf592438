"""Pooling: max (dtype-generic), average and global mean (integer and float).

Integer average pooling keeps the input's qparams and divides the raw integer sum by the window
count with TFLite's rounding (half away from zero); global mean gets its own output qparams and
requantizes ``sum(q - zp)`` by ``M = s_in / (n * s_out)``.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import qmath
from ..graph_exec import mean_float, pool_float
from . import RUN, SIM, gemm, register
from .context import KernelContext


def _pool_windows(x: np.ndarray, attrs: dict, pad_value, extra_value) -> np.ndarray:
    """Windows over x padded by ``padding`` (pad_value) then by the ceil-mode extra (extra_value)."""
    t, b, l, r = attrs["padding"]
    eb, er = attrs.get("extra", (0, 0))
    xp = gemm.pad_nchw(x, (t, b, l, r), pad_value)
    if eb or er:
        xp = gemm.pad_nchw(xp, (0, eb, 0, er), extra_value)
    return gemm.windows(xp, tuple(attrs["kernel"]), tuple(attrs["stride"]), tuple(attrs.get("dilation", (1, 1))))


@register("maxpool", RUN)
def maxpool_run(instr, inputs, ctx):
    x = inputs[0]
    low = np.iinfo(x.dtype).min if np.issubdtype(x.dtype, np.integer) else -np.inf
    return _pool_windows(x, instr.attrs, low, low).max(axis=(-2, -1))


@register("maxpool", SIM)
def maxpool_sim(instr, inputs, ctx):
    return pool_float("maxpool", inputs[0], instr.attrs)


def _window_counts(shape: tuple[int, ...], attrs: dict) -> np.ndarray:
    """Elements each window averages over, as PyTorch counts them: (OH, OW) int64."""
    ones = np.ones((1, 1) + tuple(shape[2:]), np.int64)
    inside_pad = 1 if attrs["count_include_pad"] else 0
    return _pool_windows(ones, attrs, inside_pad, 0).sum(axis=(-2, -1))[0, 0]


def _div_round_half_away(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """TFLite: (acc + sign*den/2) / den with C truncation."""
    num = num + np.where(num > 0, den // 2, -(den // 2))
    q = np.abs(num) // den
    return np.where(num < 0, -q, q)


@register("avgpool", RUN)
def avgpool_run(instr, inputs, ctx: KernelContext):
    qp = ctx.qp(instr.output)
    zp = int(qp.zero_point)
    a = instr.attrs
    x = inputs[0].astype(np.int64)
    counts = _window_counts(x.shape, a)
    if ctx.rounding == "gemmlowp":  # raw sums, padded positions hold zp (= real zero) or nothing
        sums = _pool_windows(x, a, zp if a["count_include_pad"] else 0, 0).sum(axis=(-2, -1))
        y = _div_round_half_away(sums, counts)
    else:  # ONNX Runtime: float32 average of centred values, round half even
        sums = _pool_windows(x - zp, a, 0, 0).sum(axis=(-2, -1))
        y = np.rint(sums.astype(np.float32) / counts.astype(np.float32)).astype(np.int64) + zp
    return np.clip(y, qp.qmin, qp.qmax).astype(np.int8)


@register("avgpool", SIM)
def avgpool_sim(instr, inputs, ctx: KernelContext):
    return ctx.fq(pool_float("avgpool", inputs[0], instr.attrs), instr.output)


@register("avgpool_f", RUN)
def avgpool_f_run(instr, inputs, ctx):
    with torch.no_grad():
        return pool_float("avgpool", torch.from_numpy(np.ascontiguousarray(inputs[0])), instr.attrs).numpy()


@register("avgpool_f", SIM)
def avgpool_f_sim(instr, inputs, ctx):
    return pool_float("avgpool", inputs[0], instr.attrs)


def _spatial_axes(x) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


@register("mean", RUN)
def mean_run(instr, inputs, ctx: KernelContext):
    in_qp, qp = ctx.qp(instr.inputs[0]), ctx.qp(instr.output)
    x = inputs[0].astype(np.int64) - int(in_qp.zero_point)
    acc = x.sum(axis=_spatial_axes(x), keepdims=instr.attrs["keepdim"])
    y = qmath.requantize(acc, m0=instr.arrays["m0"], shift=instr.arrays["shift"],
                         real_multiplier=instr.arrays["multiplier"], zero_point=int(qp.zero_point),
                         qmin=qp.qmin, qmax=qp.qmax, rounding=ctx.rounding)
    return y.astype(np.int8)


@register("mean", SIM)
def mean_sim(instr, inputs, ctx: KernelContext):
    return ctx.fq(mean_float(inputs[0], instr.attrs["keepdim"]), instr.output)


@register("mean_f", RUN)
def mean_f_run(instr, inputs, ctx):
    x = inputs[0]
    return x.mean(axis=_spatial_axes(x), keepdims=instr.attrs["keepdim"], dtype=np.float32)


@register("mean_f", SIM)
def mean_f_sim(instr, inputs, ctx):
    return mean_float(inputs[0], instr.attrs["keepdim"])
