"""Issue 15's done-when figures: `edgequant.search` against every uniform recipe, measured.

    python bench/mixed.py                               # digits_cnn and resnet_digits
    python bench/mixed.py --nets lite1 --cache-dir runs/mixed-cache   # EfficientNet-Lite1 (make bench-setup)

Per net: every uniform post-training recipe (registered recipes, and the search's own base at
each width) quantized and measured on the integer program (verified engine: ONNX Runtime when it
matches the interpreter, else the interpreter), then ``search(objective="size")`` and
``search(objective="latency")``. Printed: measured drop, packed size vs the smallest uniform
recipe within budget (ratio), latency vs the fastest uniform recipe within budget (same engine,
same batch, same threads), search time. Lite1's search base is ``w8a16-res`` (int16 activations,
cross-layer equalization): with int8 activations its best program is ~4 points below fp32, outside
a 1-point budget. Where no program meets the budget, the search is also run at ``best uniform drop
+ budget`` and said so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import edgequant as eq  # noqa: E402
from edgequant.errors import BudgetError  # noqa: E402
from edgequant.mixed.measure import Evaluator, calib_list, eval_batches  # noqa: E402

DIGITS_UNIFORM = ("w8a8", "w8a8-pc", "w4a8", "w4a8-keep8", "w4a4", "w4a4-keep8", "w4a4-aciq", "w2a4-aciq",
                  "w1a8-xnor", "w1a1-xnor", "w2a8-ternary")
LITE_UNIFORM = ("fp16", "w8a8", "w8a8-pc", "w8a16-res", "w4a8", "w4a8-keep8", "w4a4-keep8")  # the rest score <2%


def net(name: str):
    """(model, calib, eval, metric, search kwargs)."""
    if name in ("digits_cnn", "resnet_digits"):
        calib, test = eq.data.digits()
        return (getattr(eq.models, name)(pretrained=True), calib, test, "top1",
                dict(widths=(8, 4, 2, 1), sensitivity_samples=512, uniform=DIGITS_UNIFORM))
    if name == "lite1":
        import efficientnet_lite as lite

        os.environ.setdefault("EQ_LITE", "lite1")
        calib, ev = lite.data()
        return (lite.model(), calib, ev, "agreement",
                dict(widths=(8, 4), base="w8a16-res", sensitivity_samples=64, latency_batch=8, repeats=3,
                     uniform=LITE_UNIFORM))
    raise SystemExit(f"unknown net {name!r}: digits_cnn, resnet_digits, lite1")


def uniform_rows(model, calib, ev: Evaluator, names) -> list[dict]:
    rows = []
    for n in names:
        t = time.perf_counter()
        q = eq.quantize(model, n, calib)
        m, eng = ev.measure(q)
        rows.append({"recipe": n, "accuracy": m.accuracy, "drop": m.drop, "size_bytes": int(q.size_bytes),
                     "latency_ms": ev.latency_ms(eng), "engine": m.engine, "s": round(time.perf_counter() - t, 1)})
        print(f"  uniform {n:14s} drop {m.drop:6.2f}  {q.size_bytes:>10,d} B  {rows[-1]['latency_ms']:8.2f} ms  "
              f"({m.engine})", flush=True)
        del q
    return rows


def run_search(model, calib, ev_batches, metric, budget, objective, kw, cache, threads):
    t = time.perf_counter()
    res = eq.search(model, calib, ev_batches, budget=budget, objective=objective, metric=metric, cache=cache,
                    threads=threads, progress=True, **kw)
    return res, time.perf_counter() - t


def report(name, budget, res, wall, rows, objective) -> dict:
    base_uniform = [{"recipe": f"{res.recipe.name.split('mixed-')[0]}uniform-{c['option']} (search base)",
                     "accuracy": c["accuracy"], "drop": c["drop"], "size_bytes": c["size_bytes"],
                     "latency_ms": c.get("latency_ms"), "engine": c["engine"]}
                    for c in res.trace if c["step"] == "uniform"]
    within = [r for r in rows + base_uniform if r["drop"] <= budget + 1e-9]
    smallest = min(within, key=lambda r: r["size_bytes"], default=None)
    fastest = min((r for r in within if r.get("latency_ms") is not None), key=lambda r: r["latency_ms"], default=None)
    widths = {}
    for w, a in res.widths.values():
        widths[f"W{w}A{a}"] = widths.get(f"W{w}A{a}", 0) + 1
    out = {"net": name, "objective": objective, "budget": budget, "fp32": res.fp32_accuracy,
           "accuracy": res.accuracy, "drop": res.drop, "size_bytes": res.size_bytes, "latency_ms": res.latency_ms,
           "engine": res.engine, "search_s": wall, "candidates": len(res.trace), "widths": widths,
           "recipe": res.recipe.to_dict(),
           "smallest_uniform": smallest, "fastest_uniform": fastest,
           "size_ratio": None if smallest is None else res.size_bytes / smallest["size_bytes"],
           "latency_ratio": None if fastest is None or not res.latency_ms else res.latency_ms / fastest["latency_ms"],
           "trace": res.trace}
    su = "none" if smallest is None else f"{smallest['recipe']} {smallest['size_bytes']:,d} B"
    fu = "none" if fastest is None else f"{fastest['recipe']} {fastest['latency_ms']:.2f} ms"
    print(f"  => {name} {objective} (budget {budget:g}): drop {res.drop:.2f} (fp32 {res.fp32_accuracy:.2f}, "
          f"{res.accuracy:.2f}), {res.size_bytes:,d} B vs smallest uniform within budget {su} "
          f"(ratio {out['size_ratio'] if out['size_ratio'] is None else round(out['size_ratio'], 3)}), "
          f"latency {res.latency_ms:.2f} ms vs fastest uniform {fu} "
          f"(ratio {out['latency_ratio'] if out['latency_ratio'] is None else round(out['latency_ratio'], 3)}), "
          f"{len(res.trace)} candidates, {wall:.1f} s; widths {widths}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="digits_cnn,resnet_digits")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--objectives", default="latency,size", help="latency first: its table (with times) serves both")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None, help="per-layer tables cached here (JSON), reused on reruns")
    ap.add_argument("--json", default=None)
    ap.add_argument("--uniform", default=None, help="comma-separated uniform recipes to measure (default: per net)")
    ap.add_argument("--widths", default=None, help="weight widths to search, e.g. 8,6,4 (default: per net)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    results = []
    for name in a.nets.split(","):
        model, calib, ev_data, metric, kw = net(name)
        uniform = kw.pop("uniform") if a.uniform is None else tuple(a.uniform.split(","))
        kw.pop("uniform", None)
        if a.widths:
            kw["widths"] = tuple(int(w) for w in a.widths.split(","))
        calib = calib_list(calib)
        batches = eval_batches(ev_data)
        print(f"{name}: uniform recipes", flush=True)
        ev = Evaluator(model, batches, metric, threads=a.threads, latency_batch=kw.get("latency_batch", 64),
                       repeats=kw.get("repeats", 5))
        rows = uniform_rows(model, calib, ev, uniform)
        cache = None if a.cache_dir is None else str(Path(a.cache_dir) / f"{name}.json")
        for objective in a.objectives.split(","):
            budget = a.budget
            try:
                res, wall = run_search(model, calib, batches, metric, budget, objective, kw, cache, a.threads)
            except BudgetError as e:
                print(f"  => {name} {objective} (budget {budget:g}): {e}", flush=True)
                results.append({"net": name, "objective": objective, "budget": budget, "error": str(e), "uniform": rows})
                best8 = min(r["drop"] for r in rows)
                budget = round(max(best8, 0.0) + a.budget, 2)
                print(f"  retrying at budget {budget:g} (the best uniform int8 drop {best8:.2f} + {a.budget:g})", flush=True)
                res, wall = run_search(model, calib, batches, metric, budget, objective, kw, cache, a.threads)
            results.append(report(name, budget, res, wall, rows, objective) | {"uniform": rows})
    doc = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
           "cpus": os.cpu_count(), "threads": a.threads, "load": os.getloadavg(), "torch": torch.__version__,
           "results": results}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=1, default=str))
    print(json.dumps({"load": doc["load"], "date": doc["date"]}))


if __name__ == "__main__":
    main()
