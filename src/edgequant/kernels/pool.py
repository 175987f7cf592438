"""Pooling: max (dtype-generic), average and global mean (integer and float).

Integer average pooling keeps the input's qparams and divides the raw integer sum by the window
count with TFLite's rounding (half away from zero); global mean gets its own output qparams and
requantizes ``sum(q - zp)`` by ``M = s_in / (n * s_out)``. In the "onnxruntime" rounding mode,
average pooling follows ONNX Runtime's QLinearAveragePool on uint8 (float32 window sums of
dequantized values), and global mean its QLinearGlobalAveragePool (the integer form above).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import qmath
from ..graph_exec import mean_float, pool_float
from ..wide import container_dtype
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
    if x.dtype == np.int8:  # torch's int8 max pooling: a max is exact in any order, and every window holds an element
        t, b, l, r = instr.attrs["padding"]
        xt = torch.from_numpy(np.ascontiguousarray(x))
        if (t, l) != (b, r):
            xt = F.pad(xt, (l, r, t, b), value=-128)
            t = l = 0
        a = instr.attrs
        return F.max_pool2d(xt, a["kernel"], a["stride"], (t, l), a.get("dilation", (1, 1)), a["ceil_mode"]).numpy()
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
    else:
        y = _ort_qlinear_avgpool(x, a, np.float32(qp.scale), zp, counts)
    return np.clip(y, qp.qmin, qp.qmax).astype(np.int8)


def _ort_qlinear_avgpool(x: np.ndarray, a: dict, s: np.float32, zp: int, counts: np.ndarray) -> np.ndarray:
    """ONNX Runtime's QLinearAveragePool (uint8, same qparams in and out) on int8 program values.

    A window covering the whole unpadded image is ORT's integer global average (exact sum, then
    ``rint(sum * s / (s * n))``). Otherwise each element is dequantized to float32
    ``s * (x - zp)``, summed in window order in float32, divided by the count, then quantized as
    ``rint(avg / s + zp_u8)``. Returns int64 values in the int8 domain.
    """
    h, w = x.shape[2:]
    if not any(a["padding"]) and not any(a.get("extra", (0, 0))) and tuple(a["kernel"]) == (h, w):
        acc = (x - zp).sum(axis=(2, 3), keepdims=True).astype(np.float32)
        return np.clip(np.rint(acc * (s / (s * np.float32(h * w)))).astype(np.int64) + zp, -128, 127)
    deq = (s * (x - zp).astype(np.float32)).astype(np.float32)
    win = _pool_windows(deq, a, np.float32(0), np.float32(0))  # (N, C, OH, OW, kh, kw); pads add +0.0
    acc = np.zeros(win.shape[:4], np.float32)
    for i in range(win.shape[4]):
        for j in range(win.shape[5]):
            acc += win[..., i, j]
    avg = acc / counts.astype(np.float32)
    q = np.rint(avg / s + np.float32(zp + 128)).astype(np.int64)
    return np.clip(q, 0, 255) - 128


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
                         qmin=qp.qmin, qmax=qp.qmax, rounding=ctx.requant_rounding(instr))
    return y.astype(container_dtype(qp.bits))  # int16 when the recipe widens it (act16)


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
