"""LiteRT latency of edgequant's int8 ``.tflite`` against its fp32 ``.tflite``, batch 1.

Both files come from edgequant's own TFLite emitter (``to_tflite``): the int8 one from
``eq.quantize(model, "w8a8-pc", calib)`` (optionally also ``w4a8``, INT4 weights), the float
baseline from the ``fp32`` recipe (the same graph with float32 weights), both NHWC at the edges
(``layout="nhwc"``, what a device would feed). Models: ResNet-18 and MobileNetV2 at 224x224
(``eq.models.resnet18()/mobilenet_v2()``, random weights, BN statistics from
``eq.models.randomize_bn``) and the three digits nets (8x8, shipped weights).

LiteRT (``ai-edge-litert``) runs each file with two kernel sets:

* ``optimized`` -- the builtin kernels without delegates (ruy / SIMD; the int8 path Jacob et al.
  describe), and
* ``default``   -- what ``Interpreter(model)`` gives: the builtin kernels plus the XNNPACK delegate.

Latency is the median of interleaved repeats (every variant once per round, in alternating order,
so machine noise hits all alike); the speedup is fp32 / int8 (> 1: the int8 file is faster). The
median process CPU time per invoke is printed too: on a shared, overloaded box it is the steadier
figure (with 1 thread it is the latency an idle core would give). 1 and 2 threads.

    python bench/speed_tflite.py                         # everything (~5 min on a quiet 2-core box)
    python bench/speed_tflite.py --models resnet18 --threads 1 --repeats 21 --int4
    python bench/speed_tflite.py --quick                 # smoke run: 64x64, 1 thread, 3 repeats

``tflite_rows(...)`` returns the rows as dicts for other benches (``bench/speed.py``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import edgequant as eq
from edgequant.export.tflite import to_tflite
from edgequant.export.tflite.run import interpreter

MODELS = ("resnet18", "mobilenet_v2", "digits_cnn", "resnet_digits", "mobilenet_v2_digits")
KERNELS = ("optimized", "default")


def make_model(name: str, size: int = 224) -> tuple[torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name in ("resnet18", "mobilenet_v2"):
        return eq.models.randomize_bn(getattr(eq.models, name)()).eval(), (3, size, size)
    if name in ("digits_cnn", "resnet_digits", "mobilenet_v2_digits"):
        return getattr(eq.models, name)(pretrained=True).eval(), (1, 8, 8)
    raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def calibration(name: str, shape, n: int) -> torch.Tensor:
    """Digits nets: the real calibration split; ImageNet-shape nets: standard-normal images."""
    if name in ("resnet18", "mobilenet_v2"):
        return torch.from_numpy(np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32))
    return torch.cat([x for x, _ in eq.data.digits()[0]])


def _runner(data: bytes, kernels: str, threads: int, x_nhwc: np.ndarray):
    it = interpreter(data, kernels, num_threads=threads)
    inp = it.get_input_details()[0]
    if tuple(inp["shape"]) != x_nhwc.shape:
        it.resize_tensor_input(inp["index"], list(x_nhwc.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x_nhwc)

    def fn() -> None:
        it.invoke()

    return fn


def tflite_rows(models=MODELS, threads=(1, 2), size: int = 224, repeats: int = 15, calib: int = 8,
                kernels=KERNELS, int4: bool = False, log=print) -> list[dict]:
    """One row per (model, kernels, threads): medians in ms of LiteRT fp32 / int8 (/ int4) at batch 1,
    the fp32/int8 speedup and the file sizes. ``log`` gets one progress line per row (None: quiet)."""
    rows = []
    for name in models:
        model, shape = make_model(name, size)
        cal = calibration(name, shape, calib)
        t = time.perf_counter()
        files = {"fp32": to_tflite(eq.quantize(model, "fp32", cal), layout="nhwc"),
                 "int8": to_tflite(eq.quantize(model, "w8a8-pc", cal), layout="nhwc")}
        if int4:
            files["int4"] = to_tflite(eq.quantize(model, "w4a8", cal), layout="nhwc")
        t_export = time.perf_counter() - t
        x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
        if name not in ("resnet18", "mobilenet_v2"):
            x = np.abs(x) * 8.0  # the digits' pixel range
        x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        for k in kernels:
            for th in threads:
                fns = {v: _runner(d, k, th, x_nhwc) for v, d in files.items()}
                for fn in fns.values():  # warm up (first runs pack weights, allocate)
                    fn(), fn()
                wall: dict[str, list[float]] = {v: [] for v in fns}
                cpu: dict[str, list[float]] = {v: [] for v in fns}
                order = list(fns)
                for r in range(repeats):
                    for v in (order if r % 2 == 0 else order[::-1]):  # alternate the order, too
                        c0, t0 = time.process_time(), time.perf_counter()
                        fns[v]()
                        wall[v].append(time.perf_counter() - t0)
                        cpu[v].append(time.process_time() - c0)
                med = {v: statistics.median(ts) * 1e3 for v, ts in wall.items()}
                mcpu = {v: statistics.median(ts) * 1e3 for v, ts in cpu.items()}
                row = {"model": name, "input": "x".join(map(str, shape)), "batch": 1, "kernels": k, "threads": th,
                       "fp32_ms": med["fp32"], "int8_ms": med["int8"], "int4_ms": med.get("int4"),
                       "speedup": med["fp32"] / med["int8"],
                       "fp32_cpu_ms": mcpu["fp32"], "int8_cpu_ms": mcpu["int8"], "int4_cpu_ms": mcpu.get("int4"),
                       "speedup_cpu": mcpu["fp32"] / max(mcpu["int8"], 1e-9),
                       "speedup_int4": med["fp32"] / med["int4"] if "int4" in med else None,
                       "fp32_bytes": len(files["fp32"]), "int8_bytes": len(files["int8"]),
                       "int4_bytes": len(files["int4"]) if "int4" in files else None, "export_s": t_export}
                rows.append(row)
                if log:
                    log(f"  {name} {k} t{th}: fp32 {med['fp32']:.2f} ms, int8 {med['int8']:.2f} ms"
                        + (f", int4 {med['int4']:.2f} ms" if "int4" in med else "") + f", x{row['speedup']:.2f}"
                        f" (CPU time: fp32 {mcpu['fp32']:.2f}, int8 {mcpu['int8']:.2f} ms)", flush=True)
    return rows


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    int4 = any(r["int4_ms"] is not None for r in rows)
    print("\nLiteRT latency, batch 1 (ms, median of interleaved repeats); x = fp32 / int8 (> 1: int8 faster);\n"
          "CPU = process CPU time per invoke (all threads), immune to other processes taking the cores")
    hdr = (f"{'model':<20}{'input':<11}{'kernels':<10}{'thr':>4}{'fp32':>9}{'int8':>9}{'x int8':>8}"
           + (f"{'int4':>9}{'x int4':>8}" if int4 else "") + f"{'CPU fp32':>10}{'CPU int8':>10}{'x CPU':>7}"
           + (f"{'CPU int4':>10}" if int4 else "")
           + f"{'fp32 MB':>9}{'int8 MB':>9}")
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(f"{r['model']:<20}{r['input']:<11}{r['kernels']:<10}{r['threads']:>4}{r['fp32_ms']:>9.2f}{r['int8_ms']:>9.2f}"
              f"{r['speedup']:>8.2f}" + (f"{fmt(r['int4_ms']):>9}{fmt(r['speedup_int4']):>8}" if int4 else "")
              + f"{r['fp32_cpu_ms']:>10.2f}{r['int8_cpu_ms']:>10.2f}{r['speedup_cpu']:>7.2f}"
              + (f"{fmt(r['int4_cpu_ms']):>10}" if int4 else "")
              + f"{r['fp32_bytes'] / 1e6:>9.2f}{r['int8_bytes'] / 1e6:>9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    ap.add_argument("--size", type=int, default=224, help="image side of resnet18/mobilenet_v2")
    ap.add_argument("--repeats", type=int, default=15, help="interleaved rounds (median)")
    ap.add_argument("--calib", type=int, default=8, help="random calibration images for the 224 nets")
    ap.add_argument("--int4", action="store_true", help="also the w4a8 file (INT4 weights)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64x64, 1 thread, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.size, args.threads, args.repeats, args.calib = 64, [1], 3, 2
    torch.set_num_threads(2)
    from ai_edge_litert import __version__ as litert_version

    print(f"ai-edge-litert {litert_version}, edgequant {eq.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, {args.repeats} interleaved repeats, median", flush=True)
    rows = tflite_rows(args.models, args.threads, args.size, args.repeats, args.calib, args.kernels, args.int4)
    print_table(rows)


if __name__ == "__main__":
    main()
