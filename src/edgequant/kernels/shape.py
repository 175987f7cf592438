"""Data movement and constants: ``slice``, ``upsample``, ``const`` (dtype-generic where they can be).

* ``slice``: ``x[..., start:stop:step, ...]`` on the tensor as it is (int8 or float): the output
  integers are the input integers, the qparams are the input's.
* ``upsample`` nearest by whole factors: ``np.repeat``, again the same integers and qparams.
* ``upsample`` bilinear on int8: TFLite's ``ResizeBilinearInteger`` (reference_ops), integer
  only. Source positions are fixed point with 10 fractional bits: ``scale_10 = round(2^10 * in /
  out)`` (``(in - 1) / (out - 1)`` with align_corners), ``pos = y * scale_10`` (+ ``scale_10 / 2 -
  2^9`` with half-pixel centres, PyTorch's ``align_corners=False``); the four neighbours are
  weighted by products of 10-bit fractions (sum ``2^20``) on the raw int8 values and the sum is
  divided by ``2^20`` rounding half away from zero. The output keeps the input's qparams (a
  weighted average never leaves the input's range). Both rounding modes compute it the same way:
  the ONNX export spells out this very arithmetic (``export.onnx.shape``). The float twin runs
  the same integer formula on the (exact) grid values, so run and simulate agree exactly.
* ``const``: the stored tensor, (1, ...) broadcast over the batch by its consumer.
"""
from __future__ import annotations

import numpy as np
import torch

from ..graph_exec import upsample_float
from . import RUN, SIM, register
from .context import KernelContext

FRAC = 10  # fractional bits of TFLite's integer resize positions


# -- slice -----------------------------------------------------------------------------------------
def _index(instr, ndim: int) -> tuple:
    a = instr.attrs
    idx = [slice(None)] * ndim
    idx[int(a["axis"])] = slice(int(a["start"]), int(a["stop"]), int(a["step"]))
    return tuple(idx)


@register("slice", RUN)
def slice_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    return np.ascontiguousarray(inputs[0][_index(instr, inputs[0].ndim)])


@register("slice", SIM)
def slice_sim(instr, inputs, ctx: KernelContext):
    return inputs[0][_index(instr, inputs[0].ndim)]


# -- upsample --------------------------------------------------------------------------------------
def factors(in_hw, size) -> tuple[int, int]:
    return int(size[0]) // int(in_hw[0]), int(size[1]) // int(in_hw[1])


def resize_plan(n_in: int, n_out: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, 10-bit fraction of the upper one) per output position, as
    TFLite's ComputeInterpolationValuesInteger computes them (int64 arrays)."""
    one = 1 << FRAC
    scale = (one * n_in + n_out // 2) // n_out
    if align_corners and n_out > 1:
        scale = (one * (n_in - 1) + (n_out - 1) // 2) // (n_out - 1)
    pos = np.arange(n_out, dtype=np.int64) * scale
    if not align_corners:  # half-pixel centres
        pos = pos + scale // 2 - (1 << (FRAC - 1))
    lo = np.maximum(np.trunc(pos / one).astype(np.int64), 0)
    hi = np.minimum((pos + one - 1) // one, n_in - 1)
    return lo, hi, pos - one * lo


def bilinear_int(q: np.ndarray, size, align_corners: bool) -> np.ndarray:
    """TFLite ResizeBilinearInteger on (N, C, H, W) integers -> int64 (same grid)."""
    one = 1 << FRAC
    y0, y1, fy = resize_plan(q.shape[2], int(size[0]), align_corners)
    x0, x1, fx = resize_plan(q.shape[3], int(size[1]), align_corners)
    q = q.astype(np.int64)
    top, bot = q[:, :, y0, :], q[:, :, y1, :]  # (N, C, OH, W)
    wy0, wy1 = (one - fy)[:, None], fy[:, None]  # (OH, 1)
    wx0, wx1 = (one - fx)[None, :], fx[None, :]  # (1, OW)
    acc = (top[..., x0] * wy0 * wx0 + bot[..., x0] * wy1 * wx0 + top[..., x1] * wy0 * wx1 + bot[..., x1] * wy1 * wx1)
    half = 1 << (2 * FRAC - 1)
    num = acc + np.where(acc > 0, half, -half)
    return np.sign(num) * (np.abs(num) >> (2 * FRAC))  # C division: truncation toward zero


@register("upsample", RUN)
def upsample_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    x, a = inputs[0], instr.attrs
    if a["mode"] == "nearest":
        fh, fw = factors(x.shape[2:], a["size"])
        return np.repeat(np.repeat(x, fh, axis=2), fw, axis=3)
    if np.issubdtype(x.dtype, np.integer):
        return bilinear_int(x, a["size"], bool(a["align_corners"])).astype(x.dtype)
    with torch.no_grad():
        return upsample_float(torch.from_numpy(np.ascontiguousarray(x)), a).numpy()


@register("upsample", SIM)
def upsample_sim(instr, inputs, ctx: KernelContext):
    x, a = inputs[0], instr.attrs
    if a["mode"] == "nearest":
        fh, fw = factors(x.shape[2:], a["size"])
        return x.repeat_interleave(fh, dim=2).repeat_interleave(fw, dim=3)
    info = ctx.tensors[instr.inputs[0]]
    if info.dtype != "int8":
        return upsample_float(x, a)
    qp = info.qparams
    s, z = float(qp.scale), int(qp.zero_point)
    q = torch.round(x.detach() / s) + z  # the grid integers (exact)
    y = torch.from_numpy(bilinear_int(q.to(torch.int64).numpy(), a["size"], bool(a["align_corners"])))
    exact = (y.to(x.dtype) - z) * s
    if not x.requires_grad:
        return exact
    return upsample_float(x, a) + (exact - upsample_float(x, a)).detach()  # value of the program, float gradient


# -- const -----------------------------------------------------------------------------------------
@register("const", RUN)
def const_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    return instr.arrays["value"]


@register("const", SIM)
def const_sim(instr, inputs, ctx: KernelContext):
    qp = ctx.qp(instr.output)
    v = torch.from_numpy(instr.arrays["value"].astype(np.float64))
    return (v - int(qp.zero_point)) * float(qp.scale)


@register("const_f", RUN)
def const_f_run(instr, inputs, ctx) -> np.ndarray:
    return instr.arrays["value"]


@register("const_f", SIM)
def const_f_sim(instr, inputs, ctx):
    return torch.from_numpy(instr.arrays["value"].astype(np.float64))
