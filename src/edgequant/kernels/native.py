"""Fused integer kernels (``_native.c``, built with the package) behind NumPy-shaped functions.

Why: at ImageNet size the interpreter spends most of its time in requantization, which in NumPy is
ten int64 passes over every activation (a 240x240 EfficientNet moves ~18 M activations per
image). The C kernels do the same arithmetic as ``qmath`` in one pass and run on the torch thread
count (ctypes releases the GIL, so chunks run in parallel threads). ``qmath`` stays the spec: each
function here falls back to it when the library is absent (a source checkout that was not built,
or ``EDGEQUANT_NATIVE=0``), and tests/test_native.py checks the two bit for bit.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .. import qmath

_MODES = {"gemmlowp": 0, "single": 1, "onnxruntime": 2}
_ACC = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}
_P = ctypes.c_void_p
_I = ctypes.c_int64


def _load() -> ctypes.CDLL | None:
    if os.environ.get("EDGEQUANT_NATIVE", "1") == "0":
        return None
    spec = importlib.util.find_spec("edgequant.kernels._native")
    if spec is None or not spec.origin or not spec.origin.endswith((".so", ".pyd", ".dylib")):
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    for t in _ACC.values():
        getattr(lib, f"eq_requant_{t}").argtypes = [_P, _I, _I, _I, _P, _P, _P, _P, _I, _I, _I, _I, ctypes.c_int, _P]
    lib.eq_add.argtypes = [_P, _P] + [_I] * 13 + [ctypes.c_int, _P]
    lib.eq_lut.argtypes = [_P, _I, _P, _I, _I, _P]
    lib.eq_lut.restype = ctypes.c_int64
    lib.eq_shift_f32.argtypes = [_P, _I, ctypes.c_float, _P]
    return lib


LIB = _load()
AVAILABLE = LIB is not None
_POOL: ThreadPoolExecutor | None = None


def _ptr(a: np.ndarray | None):
    return None if a is None else a.ctypes.data


def _parallel(fn, total: int, min_chunk: int = 1 << 16) -> None:
    """Run ``fn(start, stop)`` over ``range(total)`` split across torch's thread count."""
    global _POOL
    threads = max(1, min(torch.get_num_threads(), total // min_chunk))
    if threads == 1:
        fn(0, total)
        return
    if _POOL is None or _POOL._max_workers < threads:
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgequant-native")
    step = -(-total // threads)
    list(_POOL.map(lambda s: fn(s, min(total, s + step)), range(0, total, step)))


def requantize(acc: np.ndarray, *, axis: int, bias: np.ndarray | None, m0: np.ndarray, shift: np.ndarray,
               multiplier: np.ndarray, zero_point: int, qmin: int, qmax: int, rounding: str) -> np.ndarray:
    """``clamp(zp + requant(acc + bias), qmin, qmax)`` as int8, parameters per channel along ``axis``
    (or one for all): ``qmath.requantize`` in one pass. ``acc`` holds exact integers (float32
    accumulators from an exact float convolution are fine)."""
    per_channel = np.size(m0) > 1 or (bias is not None and np.size(bias) > 1)
    axis = axis % acc.ndim if acc.ndim else 0
    channels = acc.shape[axis] if per_channel and acc.ndim else 1
    if LIB is None or acc.dtype not in _ACC:
        cs = [1] * acc.ndim
        if per_channel:
            cs[axis] = -1
        a = acc.astype(np.int64) + (0 if bias is None else np.asarray(bias, np.int64).reshape(cs))
        return qmath.requantize(a, m0=np.asarray(m0).reshape(cs), shift=np.asarray(shift).reshape(cs),
                                real_multiplier=np.asarray(multiplier).reshape(cs), zero_point=zero_point,
                                qmin=qmin, qmax=qmax, rounding=rounding).astype(np.int8)
    acc = np.ascontiguousarray(acc)
    outer = int(np.prod(acc.shape[:axis], dtype=np.int64)) if per_channel else 1
    inner = acc.size // max(outer * channels, 1)
    m0v = np.ascontiguousarray(np.broadcast_to(np.asarray(m0, np.int32).reshape(-1), (channels,)))
    shv = np.ascontiguousarray(np.broadcast_to(np.asarray(shift, np.int32).reshape(-1), (channels,)))
    mv = np.ascontiguousarray(np.broadcast_to(np.asarray(multiplier, np.float32).reshape(-1), (channels,)))
    bv = None if bias is None else np.ascontiguousarray(np.broadcast_to(np.asarray(bias, np.int32).reshape(-1), (channels,)))
    out = np.empty(acc.shape, np.int8)
    fn = getattr(LIB, f"eq_requant_{_ACC[acc.dtype]}")
    mode = _MODES[rounding]
    if outer > 1:  # split across samples / rows
        row = channels * inner
        _parallel(lambda s, e: fn(acc.ctypes.data + s * row * acc.itemsize, e - s, channels, inner, _ptr(bv),
                                  _ptr(m0v), _ptr(shv), _ptr(mv), 1, zero_point, qmin, qmax, mode,
                                  out.ctypes.data + s * row), outer, min_chunk=max(1, (1 << 16) // max(row, 1)))
    else:  # split the channels (or the flat tensor, per-tensor)
        if channels > 1:
            _parallel(lambda s, e: fn(acc.ctypes.data + s * inner * acc.itemsize, 1, e - s, inner,
                                      None if bv is None else bv.ctypes.data + 4 * s, m0v.ctypes.data + 4 * s,
                                      shv.ctypes.data + 4 * s, mv.ctypes.data + 4 * s, 1, zero_point, qmin, qmax,
                                      mode, out.ctypes.data + s * inner), channels,
                      min_chunk=max(1, (1 << 16) // max(inner, 1)))
        else:
            _parallel(lambda s, e: fn(acc.ctypes.data + s * acc.itemsize, 1, 1, e - s, _ptr(bv), _ptr(m0v),
                                      _ptr(shv), _ptr(mv), 0, zero_point, qmin, qmax, mode, out.ctypes.data + s),
                      acc.size)
    return out


def add(a: np.ndarray, b: np.ndarray, za: int, zb: int, zy: int, attrs: dict, lo: int, hi: int,
        single: bool) -> np.ndarray | None:
    """TFLite's integer Add on same-shape int8 tensors in one pass; ``None`` where the native
    kernel does not apply (no library, broadcasting), so the caller runs the NumPy spec."""
    if LIB is None or a.shape != b.shape or a.dtype != np.int8 or b.dtype != np.int8:
        return None
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    out = np.empty(a.shape, np.int8)
    args = (za, zb, zy, attrs["left_shift"], attrs["m0_a"], attrs["shift_a"], attrs["m0_b"], attrs["shift_b"],
            attrs["m0_out"], attrs["shift_out"], lo, hi, int(single))
    _parallel(lambda s, e: LIB.eq_add(a.ctypes.data + s, b.ctypes.data + s, e - s, *args, out.ctypes.data + s), a.size)
    return out


def lut(x: np.ndarray, table: np.ndarray, lo: int) -> tuple[np.ndarray, int]:
    """``table[x - lo]`` for int8 ``x``; returns (output, index of the first input outside the
    table or -1). ``None`` output where the native kernel does not apply."""
    if LIB is None or x.dtype != np.int8 or table.dtype != np.int8:
        return None, -1
    x = np.ascontiguousarray(x)
    table = np.ascontiguousarray(table)
    out = np.empty(x.shape, np.int8)
    bad = [-1]

    def part(s, e):
        r = LIB.eq_lut(x.ctypes.data + s, e - s, table.ctypes.data, lo, table.shape[0], out.ctypes.data + s)
        if r >= 0:
            bad[0] = s + r

    _parallel(part, x.size)
    return out, bad[0]


def shifted_f32(x: np.ndarray, zero_point: int) -> torch.Tensor:
    """int8 ``x`` -> float32 torch tensor ``x - zero_point`` (exact), the input of a float32 conv."""
    x = np.ascontiguousarray(x)
    if LIB is None or x.dtype != np.int8:
        return torch.from_numpy(x).to(torch.float32).sub_(float(zero_point))
    out = torch.empty(x.shape, dtype=torch.float32)
    _parallel(lambda s, e: LIB.eq_shift_f32(x.ctypes.data + s, e - s, float(zero_point), out.data_ptr() + 4 * s), x.size)
    return out
