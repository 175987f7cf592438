"""Give freed large buffers back to the OS, so peak RSS is the live memory, not its history.

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MB), after
which large NumPy / torch buffers come from the heap, where freed blocks stay mapped and fragment.
On an ImageNet-size net, calibration and reconstruction allocate thousands of 1-60 MB temporaries
of varying sizes: measured on EfficientNet-Lite1, ``w4a4-brecq`` peaked at 2.45 GB RSS with the
dynamic threshold and 1.15 GB with a fixed 1 MB one (the live memory never exceeded the latter).
``bound_heap`` fixes the threshold (``mallopt(M_MMAP_THRESHOLD)``): every block of 1 MB or more is
its own mapping, returned to the OS when freed. It runs once when edgequant is imported; set
``EDGEQUANT_MALLOC=default`` to keep glibc's behaviour. Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD_BYTES = 1 << 20

_applied: bool | None = None


def bound_heap(threshold: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True when it took effect."""
    global _applied
    if os.environ.get("EDGEQUANT_MALLOC", "").lower() == "default":
        _applied = False
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        _applied = False
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
    return _applied


def applied() -> bool | None:
    """Whether ``bound_heap`` took effect (None: not called)."""
    return _applied
