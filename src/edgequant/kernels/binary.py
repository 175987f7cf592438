"""1-bit kernels: binarization of an activation tensor and XNOR-popcount GEMMs.

* ``binarize`` -- an int8 "carrier" tensor -> a 1-bit tensor holding -1/+1: ``+1`` iff the
  carrier integer is ``>= threshold`` (the carrier value of the midpoint between the two binary
  levels). Run and simulation compare the same integers, so they agree exactly.
* ``conv_xnor`` / ``linear_xnor`` -- conv/linear whose input is a 1-bit tensor and whose weights
  are +-1. With ``a`` = bits of ``x > 0``, ``m`` = bits of ``x != 0`` and ``b`` = bits of
  ``w > 0`` (one bit per tap, packed into 64-bit words)::

      sum_k x_k w_k = popcount(m) - 2 * popcount((a XOR b) AND m)

  which for a pure +-1 vector (``m`` all ones) is XNOR-Net's ``n - 2 * popcount(a XOR b)``. The
  mask only matters for taps that hold 0 (padding of a tensor whose zero point is 0). Then, as for
  every integer GEMM, ``acc = sum (x - zx) w = sum x w - zx * sum w`` (padding holds ``zx``), plus
  the int32 bias, requantized exactly like ``conv``. The float twin is ``conv``'s: same program.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from . import RUN, SIM, gemm, register
from .context import KernelContext
from .conv import float_accumulate, requantize_accumulator, rows

_WORD_BYTES = 8
_CHUNK_BYTES = 1 << 24  # scratch per popcount block

if hasattr(np, "bitwise_count"):
    def popcount(words: np.ndarray) -> np.ndarray:
        """Set bits per element (uint64 -> uint8)."""
        return np.bitwise_count(words)
else:  # pragma: no cover - numpy < 2.0
    _BYTE_POP = np.array([bin(i).count("1") for i in range(256)], np.uint8)

    def popcount(words: np.ndarray) -> np.ndarray:
        b = words.view(np.uint8).reshape(words.shape + (_WORD_BYTES,))
        return _BYTE_POP[b].sum(axis=-1, dtype=np.uint8)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Boolean (..., K) -> uint64 words (..., ceil(K/64)), zero-padded: the bitplane of a vector."""
    packed = np.packbits(bits, axis=-1, bitorder="little")  # (..., ceil(K/8))
    pad = (-packed.shape[-1]) % _WORD_BYTES
    if pad:
        packed = np.concatenate([packed, np.zeros(packed.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return np.ascontiguousarray(packed).view(np.uint64)


def xnor_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``x @ w.T`` for ``x`` (P, K) in {-1, 0, +1} and ``w`` (O, K) in {-1, +1}, via popcounts.

    Returns int64 (P, O).
    """
    a, m = pack_bits(x > 0), pack_bits(x != 0)  # (P, W)
    b = pack_bits(w > 0)  # (O, W)
    n_valid = popcount(m).sum(axis=-1, dtype=np.int64)  # (P,)
    P, O, W = a.shape[0], b.shape[0], a.shape[1]
    out = np.empty((P, O), np.int64)
    step = max(1, _CHUNK_BYTES // max(1, O * W * 8))
    for s in range(0, P, step):
        diff = (a[s : s + step, None, :] ^ b[None, :, :]) & m[s : s + step, None, :]  # (p, O, W)
        out[s : s + step] = n_valid[s : s + step, None] - 2 * popcount(diff).sum(axis=-1, dtype=np.int64)
    return out


def xnor_accumulate(instr, x: np.ndarray, zx: int) -> np.ndarray:
    """Exact ``sum((x - zx) * w)`` of a conv/linear with +-1 weights on a 1-bit input, int64."""
    w = instr.arrays["weight"]
    if x.size and (int(x.min()) < -1 or int(x.max()) > 1):
        raise UnsupportedOpError(f"{instr.op} '{instr.node}': a binary GEMM got input values outside "
                                 f"{{-1, 0, 1}} (min {int(x.min())}, max {int(x.max())}); the program is inconsistent")
    if instr.op.startswith("linear"):
        acc = xnor_matmul(x.reshape(-1, x.shape[-1]), w).reshape(x.shape[:-1] + (w.shape[0],))
        return acc - zx * w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    a = instr.attrs
    squeeze = a.get("dims", 2) == 1 and x.ndim == 3
    x4 = x[:, :, None, :] if squeeze else x
    n, c = x4.shape[:2]
    o, cg, kh, kw = w.shape
    groups = a["groups"]
    win = gemm.windows(gemm.pad_nchw(x4, tuple(a["padding"]), zx), (kh, kw), tuple(a["stride"]), tuple(a["dilation"]))
    oh, ow = win.shape[2], win.shape[3]
    og = o // groups
    cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6).reshape(groups, n * oh * ow, cg * kh * kw)
    wm = w.reshape(groups, og, cg * kh * kw)
    res = np.stack([xnor_matmul(cols[g], wm[g]) for g in range(groups)])  # (g, N*OH*OW, og)
    acc = res.reshape(groups, n, oh, ow, og).transpose(1, 0, 4, 2, 3).reshape(n, o, oh, ow)
    acc = acc - zx * w.reshape(o, -1).astype(np.int64).sum(axis=1)[None, :, None, None]
    return acc[:, :, 0, :] if squeeze else acc


def _xnor_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    """The popcount form above is the definition; the same exact sum of +-1 products comes from a
    float32 convolution (every partial sum is at most the reduction length, far below 2^24),
    which is ~100x faster here. tests/test_lowbit.py checks the two agree."""
    x = inputs[0]
    zx = int(ctx.qp(instr.inputs[0]).zero_point)
    if x.size and (int(x.min()) < -1 or int(x.max()) > 1):
        raise UnsupportedOpError(f"{instr.op} '{instr.node}': a binary GEMM got input values outside "
                                 f"{{-1, 0, 1}} (min {int(x.min())}, max {int(x.max())}); the program is inconsistent")
    acc = float_accumulate(instr, x, zx)
    return requantize_accumulator(instr, xnor_accumulate(instr, x, zx) if acc is None else acc, ctx)


for _op in ("conv", "linear"):
    register(f"{_op}_xnor", RUN)(rows(_xnor_run))  # rows: Linear on (N, ..., I) inputs
    register(f"{_op}_xnor", SIM)(SIM[_op])  # the float twin is the plain GEMM's: same arithmetic


# -- binarize -------------------------------------------------------------------------------------
@register("binarize", RUN)
def binarize_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    return np.where(inputs[0].astype(np.int32) >= int(instr.attrs["threshold"]), 1, -1).astype(np.int8)


@register("binarize", SIM)
def binarize_sim(instr, inputs, ctx: KernelContext):
    import torch

    qc, qb = ctx.qp(instr.inputs[0]), ctx.qp(instr.output)
    k = torch.round(inputs[0] / float(qc.scale)) + int(qc.zero_point)  # the carrier integer (exact)
    q = torch.where(k >= int(instr.attrs["threshold"]), 1.0, -1.0).to(inputs[0].dtype)
    return (q - int(qb.zero_point)) * float(qb.scale)
