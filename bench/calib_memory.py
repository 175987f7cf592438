"""Peak memory of calibration vs the number of calibration samples, per observer.

    python bench/calib_memory.py [--samples 1000 10000] [--observers minmax percentile mse kl]
                                 [--size 16] [--batch 100] [--check]

Each (observer, sample count) runs in a fresh subprocess: capture ResNet-style ``resnet_digits``
(pretrained) for inputs of ``size x size``, calibrate once on one batch (warm-up: lazy imports,
first allocations), reset the kernel's peak-RSS counter (``/proc/self/clear_refs``), then calibrate
streaming seeded random batches that are generated on the fly (the data set itself never
exists in memory). Reported per run: peak RSS of the process during calibration (VmHWM), its
increase over the RSS before calibration, and the tracemalloc peak (NumPy/Python heap) -- all
three must stay flat when calibration keeps fixed-size statistics. ``--check`` exits 1 when the
peak RSS at the largest sample count exceeds the smallest by more than 10%.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def child(observer: str, samples: int, size: int, batch: int) -> dict:
    import tracemalloc

    import torch

    import edgequant as eq
    from edgequant.api import capture_prepared
    from edgequant.calibrate import calibrate

    torch.set_num_threads(1)
    recipe = eq.Recipe(f"w8a8-{observer}", "static",
                       weights=eq.TensorSpec(8, symmetric=True, narrow=True, per_channel=True),
                       activations=eq.TensorSpec(8, observer=observer))
    model = eq.models.resnet_digits(pretrained=True).eval()
    graph = capture_prepared(model, torch.rand(2, 1, size, size))

    def stream(n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        for i in range(0, n, batch):
            yield torch.rand(min(batch, n - i), 1, size, size, generator=g)

    calibrate(graph, recipe, stream(batch, 1))  # warm-up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    rss0 = _status_kb("VmRSS")
    tracemalloc.start()
    t = time.perf_counter()
    summary: dict = {}
    calibrate(graph, recipe, stream(samples, 0), summary=summary)
    secs = time.perf_counter() - t
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _status_kb("VmHWM")
    assert summary["samples"] == samples
    return {"observer": observer, "samples": samples, "size": size, "rss_before_mb": rss0 / 1024,
            "peak_rss_mb": peak / 1024, "peak_increase_mb": (peak - rss0) / 1024,
            "tracemalloc_peak_mb": traced_peak / 2**20, "seconds": secs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--observers", nargs="+", default=["minmax", "percentile", "mse", "kl"])
    ap.add_argument("--size", type=int, default=16, help="input height/width (digits are 8)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--check", action="store_true", help="exit 1 if peak RSS grows more than 10%%")
    ap.add_argument("--child", nargs=2, metavar=("OBSERVER", "SAMPLES"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.size, a.batch)))
        return 0
    print(f"resnet_digits, inputs 1x{a.size}x{a.size}, batches of {a.batch}, one fresh process per run")
    print(f"{'observer':<11}{'samples':>8}{'peak RSS MB':>13}{'+ over start':>14}{'tracemalloc':>13}{'seconds':>9}")
    ok = True
    for obs in a.observers:
        rows = []
        for n in a.samples:
            cmd = [sys.executable, __file__, "--child", obs, str(n), "--size", str(a.size), "--batch", str(a.batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            rows.append(r)
            print(f"{obs:<11}{n:>8}{r['peak_rss_mb']:>13.1f}{r['peak_increase_mb']:>14.1f}"
                  f"{r['tracemalloc_peak_mb']:>13.2f}{r['seconds']:>9.1f}")
        lo, hi = rows[0], rows[-1]
        ratio = hi["peak_rss_mb"] / lo["peak_rss_mb"]
        within = ratio <= 1.10
        ok &= within
        print(f"{obs:<11}peak RSS {hi['samples']}/{lo['samples']} samples: {ratio:.3f} "
              f"({'within' if within else 'OVER'} 10%); tracemalloc peak ratio "
              f"{hi['tracemalloc_peak_mb'] / max(lo['tracemalloc_peak_mb'], 1e-9):.3f}")
    return 0 if ok or not a.check else 1


if __name__ == "__main__":
    sys.exit(main())
