"""Give freed large buffers back to the OS, so peak RSS is the live memory, not its history.

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MB), after
which large NumPy / torch buffers come from the heap, where freed blocks stay mapped and fragment.
On an ImageNet-size net, calibration and reconstruction allocate thousands of 1-60 MB temporaries
of varying sizes: measured on EfficientNet-Lite1, ``w4a4-brecq`` peaked at 2.45 GB RSS with the
dynamic threshold and 1.15 GB with a fixed 1 MB one (the live memory never exceeded the latter).
``bounded_heap()`` (a context manager around ``quantize``: calibration, PTQ steps, reconstruction)
fixes the threshold at 1 MB (``mallopt(M_MMAP_THRESHOLD)``): every block of 1 MB or more is its own
mapping, returned to the OS when freed. On leaving it sets the threshold to glibc's own ceiling
(32 MB) and trims the heap: the interpreter's and ORT's same-sized per-chunk buffers are then
reused from the heap again, because a fresh mapping per buffer costs page faults (Lite1 ``q.run``
took 2x longer with every buffer mapped). Reconstruction's training loop runs under ``reusing_heap()``
for the same reason (BRECQ's first Lite1 block: 6 CPU-s for 40 steps on the heap, 39 with every
buffer mapped); its live memory is small (windows), and the heap is trimmed after it. Set ``EDGEQUANT_MALLOC=default`` to leave glibc alone.
Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from contextlib import contextmanager
from typing import Iterator

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD_BYTES = 1 << 20
CEILING_BYTES = 32 << 20  # glibc's largest dynamic threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)

_applied: bool | None = None


def _libc():
    if os.environ.get("EDGEQUANT_MALLOC", "").lower() == "default":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return None


def bound_heap(threshold: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True when it took effect."""
    global _applied
    libc = _libc()
    _applied = bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    return _applied


@contextmanager
def bounded_heap() -> Iterator[None]:
    """Inside: blocks >= 1 MB are mapped and returned when freed. After: 32 MB threshold, heap trimmed."""
    if not bound_heap(THRESHOLD_BYTES):
        yield
        return
    try:
        yield
    finally:
        global _applied
        libc = _libc()
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, CEILING_BYTES)
            libc.malloc_trim(0)
        _applied = False


def applied() -> bool | None:
    """Whether ``bound_heap`` took effect (None: not called)."""
    return _applied


@contextmanager
def reusing_heap() -> Iterator[None]:
    """Inside a ``bounded_heap``: buffers come from the heap again (many same-sized per-step
    buffers of a training loop), trimmed and bounded again after."""
    libc = _libc() if _applied else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, CEILING_BYTES)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)
        libc.malloc_trim(0)


def trim() -> None:
    """Give the heap's free pages back to the OS now (inside ``reusing_heap``): a training loop whose
    step buffers vary in size (clipped windows) otherwise grows the heap step after step -- measured
    on EfficientNet-Lite1's second BRECQ chain, 1.1 -> 2.7 GB in 100 steps with ~30 MB live."""
    libc = _libc() if _applied is not None else None
    if libc is not None:
        libc.malloc_trim(0)
