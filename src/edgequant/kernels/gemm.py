"""Exact integer GEMM and convolution in NumPy, fast.

NumPy's int32/int64 ``matmul`` does not use BLAS (~2 GOP/s here). Float BLAS is exact for integer
products as long as every partial sum stays below the float's integer limit (2^24 for float32,
2^53 for float64), so we split K into chunks whose worst-case sum fits float32 and add the
chunks in int64. Same bits as a true int32 accumulator, ~30x faster.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

_F32_EXACT = 1 << 24
_F64_EXACT = 1 << 53
F32_EXACT = _F32_EXACT


@contextlib.contextmanager
def exact_float():
    """float32 convolutions and matmuls in IEEE float32 only: no NNPACK (Winograd/FFT round), no
    bf16/TF32 down-conversion even where the user enabled it, so exact integer sums stay exact."""
    conv, mm = torch.backends.mkldnn.conv.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision
    prec = torch.get_float32_matmul_precision()
    try:
        torch.backends.mkldnn.conv.fp32_precision = "ieee"
        torch.backends.mkldnn.matmul.fp32_precision = "ieee"
        if prec != "highest":
            torch.set_float32_matmul_precision("highest")
        with torch.backends.nnpack.flags(enabled=False):
            yield
    finally:
        torch.backends.mkldnn.conv.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision = conv, mm
        if prec != "highest":
            torch.set_float32_matmul_precision(prec)


def _maxabs(a: np.ndarray) -> int:
    if a.size == 0:
        return 0
    return int(max(abs(int(a.max())), abs(int(a.min()))))


def _int_mm_ok(a: np.ndarray, b: np.ndarray) -> bool:
    """torch._int_mm (int8 x int8 -> int32, exact) needs M > 16 and K, N multiples of 8."""
    return (a.dtype == np.int8 and b.dtype == np.int8 and a.ndim == 2 and b.ndim == 2
            and a.shape[0] > 16 and a.shape[1] % 8 == 0 and b.shape[1] % 8 == 0 and a.shape[1] * 128 * 128 < 2**31)


def exact_matmul(a: np.ndarray, b: np.ndarray, b_f32: np.ndarray | None = None) -> np.ndarray:
    """Exact ``a @ b`` for integer arrays (..., M, K) @ (..., K, N) -> int64.

    int8 x int8 goes through ``torch._int_mm`` (exact int32 accumulation) when its shape rules
    allow; otherwise float32 BLAS in K chunks small enough to stay exact, else float64.
    ``b_f32`` is an optional pre-converted float32 copy of ``b`` (weights are converted once).
    """
    if a.ndim == 3 and a.shape[0] == 1 and b.ndim == 3:
        return exact_matmul(a[0], b[0], None if b_f32 is None else b_f32[0])[None]
    if _int_mm_ok(a, b):
        ta = torch.from_numpy(np.require(a, requirements=["C", "W"]))
        out = torch._int_mm(ta, torch.from_numpy(np.require(b, requirements=["C", "W"])))
        return out.numpy().astype(np.int64)
    k = a.shape[-1]
    bound = max(_maxabs(a) * (_maxabs(b) if b_f32 is None else int(np.abs(b_f32).max(initial=0))), 1)
    if bound * k < _F32_EXACT:
        bf = b.astype(np.float32) if b_f32 is None else b_f32
        return np.matmul(a.astype(np.float32), bf).astype(np.int64)
    chunk = _F32_EXACT // bound
    if chunk >= 128:
        af = a.astype(np.float32)
        bf = b.astype(np.float32) if b_f32 is None else b_f32
        out = None
        for s in range(0, k, chunk):
            part = np.matmul(af[..., s : s + chunk], bf[..., s : s + chunk, :]).astype(np.int64)
            out = part if out is None else out + part
        return out
    if bound * k < _F64_EXACT:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a.astype(np.int64), b.astype(np.int64))  # slow but exact for anything


def pad_nchw(x: np.ndarray, padding: tuple[int, int, int, int], value) -> np.ndarray:
    """Pad the last two dims by (top, bottom, left, right) with a constant."""
    t, b, l, r = padding
    if t == b == l == r == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), mode="constant", constant_values=value)


def windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> np.ndarray:
    """Sliding windows of an already padded (N, C, H, W) array -> (N, C, OH, OW, kh, kw) view."""
    kh, kw = kernel
    dh, dw = dilation
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    v = np.lib.stride_tricks.sliding_window_view(x, (eh, ew), axis=(2, 3))
    return v[:, :, :: stride[0], :: stride[1], ::dh, ::dw]


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    pad_value=0,
    exact: bool = True,
    w_f32: np.ndarray | None = None,
) -> np.ndarray:
    """Convolution (N, C, H, W) x (O, C/g, kh, kw) -> (N, O, OH, OW).

    ``exact=True``: integer inputs, int64 result equal to the true integer sum. Otherwise a float32
    convolution. Padding uses ``pad_value`` (the zero point for quantized inputs).
    """
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    xp = pad_nchw(x, padding, pad_value)
    win = windows(xp, (kh, kw), stride, dilation)  # (N, C, OH, OW, kh, kw)
    oh, ow = win.shape[2], win.shape[3]
    if groups == c and cg == 1 and o == c:  # depthwise: 9 multiply-adds, no im2col
        acc_t = np.int64 if exact else np.float32
        wt = w.astype(acc_t)
        out = np.zeros((n, c, oh, ow), acc_t)
        for i in range(kh):
            for j in range(kw):
                out += win[:, :, :, :, i, j].astype(acc_t) * wt[None, :, 0, i, j, None, None]
        return out
    og = o // groups
    # (N, g, cg, OH, OW, kh, kw) -> (g, N*OH*OW, cg*kh*kw)
    cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    cols = cols.reshape(groups, n * oh * ow, cg * kh * kw)
    wm = w.reshape(groups, og, cg * kh * kw).transpose(0, 2, 1)  # (g, K, og)
    if exact:
        wf = None if w_f32 is None else w_f32.reshape(groups, og, cg * kh * kw).transpose(0, 2, 1)
        res = exact_matmul(cols, wm, wf)
    else:
        res = np.matmul(cols.astype(np.float32), wm.astype(np.float32))
    # (g, N, OH, OW, og) -> (N, g*og, OH, OW)
    res = res.reshape(groups, n, oh, ow, og).transpose(1, 0, 4, 2, 3).reshape(n, o, oh, ow)
    return res
