"""Peak resident memory of one sweep row (Linux: VmHWM, reset per row through clear_refs).

``ru_maxrss`` only ever grows over the process, so it cannot say which row needed the memory; on
Linux writing "5" to /proc/self/clear_refs resets the high-water mark. Elsewhere the process-wide
peak is reported (and says so through ``per_row``).
"""
from __future__ import annotations

import resource
import sys


def reset_peak() -> bool:
    """Reset the peak RSS counter; False where the platform cannot (the peak is then process-wide)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """Peak RSS in MB since the last successful ``reset_peak`` (or since the process started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return r / (2**20 if sys.platform == "darwin" else 1024.0)
