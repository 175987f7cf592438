"""The per-layer cost table: for every unit and option, what it costs in error, bytes and time.

For each option ``o`` one program quantizes *every* unit at ``o`` (the base plus overrides). From it:

* its full integer program is measured on the evaluation set (a calibration point: summed
  per-layer noise -> measured drop, see ``calibration``; and a candidate in its own right);
* ``noise[u][o]``: one layer at a time (``sweep.layers.sensitivity``: the fp32 graph with only
  that layer replaced by the program's own instructions, fake-quant twin) the relative output
  error ``sum((z_q - z)^2) / sum(z^2)`` of the logits. Independent layer noises add at the output
  (Zhou et al., "Adaptive Quantization for Deep Neural Network", arXiv 1712.01048), which makes
  the constraint linear; the one-layer metric drop is kept too (``drop1``) for the report;
* ``bytes[u][o]``: the packed bytes of the unit's instructions (as ``QuantizedModel.size_bytes``
  counts them), so a mixed program's size is exactly ``const_bytes + sum bytes[u][o_u]``;
* ``ms[u][o]`` (latency objective only): the unit's measured time on the engine that runs the
  program (ONNX Runtime's node profile, ``profile``; or the interpreter's per-instruction wall
  time from its trace hook), median of ``repeats`` runs; ``ms_engine`` says which.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import interpreter
from ..api import quantize
from ..deadline import check_deadline
from ..program import Program
from ..sweep import layers
from .measure import Evaluator
from .space import Option, Space, recipe_for

TABLE_VERSION = 2  # 2: per-layer ms from the verified engine (ORT node profile)


def key(o: Option) -> str:
    return f"w{o[0]}a{o[1]}"


def instr_bytes(program: Program, instrs) -> int:
    """Packed bytes of some instructions, counted as ``quantized.program_size_bytes`` does."""
    total = 0
    for ins in instrs:
        for k, arr in ins.arrays.items():
            if k == "weight" and arr.dtype == np.int8:
                bits = ins.attrs.get("weight_bits", 8)
                total += int(ins.attrs.get("packed_weight_bytes", (arr.size * bits + 7) // 8))
            elif k not in ("m0", "shift", "multiplier"):
                total += arr.nbytes
        info = program.tensors.get(ins.output)
        if info is not None and info.qparams is not None:
            total += 8
    return total


def unit_ms(program: Program, x: np.ndarray, module_of: dict[str, str], rounding: str, repeats: int) -> dict[str, float]:
    """Median wall ms per unit of the instructions lowered from it, on the reference interpreter."""
    runs: list[dict[str, float]] = []
    for _ in range(max(repeats, 1) + 1):  # the first run warms caches and is dropped
        acc: dict[str, float] = {}
        last = [time.perf_counter()]

        def trace(ins, _v, acc=acc, last=last):
            now = time.perf_counter()
            u = module_of.get(ins.node)
            if u is not None:
                acc[u] = acc.get(u, 0.0) + 1000.0 * (now - last[0])
            last[0] = now

        interpreter.run(program, x, rounding=rounding, trace=trace)
        runs.append(acc)
    runs = runs[1:]
    return {u: statistics.median(r.get(u, 0.0) for r in runs) for u in set().union(*runs)}


def engine_unit_ms(q, engine: str, ev: Evaluator, module_of: dict[str, str]) -> tuple[dict[str, float], str]:
    """(unit -> ms, what measured it): ONNX Runtime's node profile when ORT is the verified engine
    (``profile``), else the interpreter's per-instruction times; a profile that cannot be read
    falls back to the interpreter, and says why."""
    if engine == "onnxruntime":
        from .profile import ort_unit_ms

        tensors = {ins.output: module_of[ins.node] for ins in q.program.instrs if ins.node in module_of}
        try:
            return ort_unit_ms(q, ev.latency_x, tensors, ev.threads, ev.repeats), "onnxruntime (node profile)"
        except Exception as e:  # a runtime quirk must not stop the search: time it where we can
            why = f"interpreter (onnxruntime profile failed: {type(e).__name__}: {str(e)[:120]})"
            return unit_ms(q.program, ev.latency_x, module_of, ev.rounding, ev.repeats), why
    return unit_ms(q.program, ev.latency_x, module_of, ev.rounding, ev.repeats), "interpreter"


def sensitivity_batches(ev: Evaluator, samples: int | None, seed: int, batch: int = 64):
    """A seeded random subset of the evaluation set (all of it when ``samples`` covers it)."""
    n = ev.x.shape[0]
    idx = np.arange(n) if samples is None or samples >= n else np.sort(np.random.default_rng(seed).permutation(n)[:samples])
    idx_t = torch.from_numpy(idx)
    x, y, ref = ev.x[idx_t], ev.y[idx_t], ev.fp32_logits[idx_t]
    return [(x[s:s + batch], y[s:s + batch]) for s in range(0, len(idx), batch)], y, ref


def fingerprint(model_graph, space: Space, samples: int | None, seed: int, calib_n: int, eval_n: int,
                metric: str, rounding: str) -> str:
    """What a cached table depends on: the graph, base recipe, options, samples, seed, data sizes."""
    doc = {"v": TABLE_VERSION, "graph": [(n.name, n.op, n.module, list(n.shape)) for n in model_graph.nodes],
           "params": [float(np.sum(np.abs(v))) for n in model_graph.nodes for v in n.params.values()],
           "base": space.base.to_dict(), "units": list(space.units), "options": [list(o) for o in space.options],
           "samples": samples, "seed": seed, "calib_n": calib_n, "eval_n": eval_n, "metric": metric,
           "rounding": rounding}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build(model, graph, space: Space, calib_x: list[torch.Tensor], ev: Evaluator, samples: int | None, seed: int,
          want_ms: bool, say: Callable[[str], None], record: Callable[[dict], None]) -> dict:
    """The table (a JSON-able dict); ``record(candidate)`` receives each uniform program measured.

    The sensitivity study holds every node's output of a batch, so its batch is sized from the
    graph's per-sample footprint as in the sweep (``layers.SENSITIVITY_MEMORY_MB``).
    """
    bs = int(max(1, min(64, layers.SENSITIVITY_MEMORY_MB * 2**20 // layers.graph_bytes_per_sample(graph))))
    batches, y_sub, ref = sensitivity_batches(ev, samples, seed, bs)
    fp32_sub = ev.score(ref, y_sub)
    tab: dict = {"version": TABLE_VERSION, "units": list(space.units), "options": [key(o) for o in space.options],
                 "samples": int(y_sub.shape[0]), "noise": {u: {} for u in space.units},
                 "drop1": {u: {} for u in space.units}, "bytes": {u: {} for u in space.units},
                 "ms": {u: {} for u in space.units} if want_ms else None, "uniform": {}, "const_bytes": None}
    for o in space.options:
        k = key(o)
        say(f"uniform {k}: quantize")
        t = time.perf_counter()
        q = quantize(model, recipe_for(space.base, space.uniform(o), f"{space.base.name}-all-{k}"), calib_x)
        t_q = time.perf_counter() - t
        say(f"uniform {k}: evaluate")
        m, eng = ev.measure(q, f"uniform {k}")
        module_of = {n.name: n.module for n in q.graph.nodes if n.module in tab["noise"]}
        # the reference is the program's own float graph (PTQ steps such as bias correction may
        # have changed its parameters), so a layer's noise is that layer's quantization alone
        g_ref = torch.cat([torch.as_tensor(layers.float_outputs(q.graph, x, {q.graph.output})[q.graph.output])
                           for x, _ in batches]).double()
        denom = float(torch.sum(g_ref ** 2)) or 1.0

        def score(logits: torch.Tensor, y: torch.Tensor, g_ref=g_ref, denom=denom) -> dict:
            return {"metric": ev.score(logits, y), "noise": float(torch.sum((logits.double() - g_ref) ** 2)) / denom}

        say(f"uniform {k}: per-layer sensitivity")
        per = layers.sensitivity(q.program, q.graph, batches, score, ev.rounding,
                                 lambda layer, k=k: say(f"uniform {k}: sensitivity {layer}"))
        for p in per:
            u = p["module"]
            if u in tab["noise"]:
                tab["noise"][u][k] = tab["noise"][u].get(k, 0.0) + p["score"]["noise"]
                tab["drop1"][u][k] = tab["drop1"][u].get(k, 0.0) + fp32_sub - p["score"]["metric"]
        lay = layers.quantized_layers(q.program, q.graph)
        by_unit: dict[str, list] = {}
        for L in lay:
            by_unit.setdefault(L.module, []).extend(L.instrs)
        for u in space.units:
            tab["bytes"][u][k] = instr_bytes(q.program, by_unit.get(u, []))
        const = int(q.size_bytes) - sum(tab["bytes"][u][k] for u in space.units)
        tab["const_bytes"] = const if tab["const_bytes"] is None else tab["const_bytes"]
        if want_ms:
            say(f"uniform {k}: per-layer latency on {eng.name}")
            ms, tab.setdefault("ms_engine", {})[k] = engine_unit_ms(q, eng.name, ev, module_of)
            for u in space.units:
                tab["ms"][u][k] = ms.get(u, 0.0)
        lat = ev.latency_ms(eng)
        noise = sum(tab["noise"][u].get(k, 0.0) for u in space.units)
        tab["uniform"][k] = {"accuracy": m.accuracy, "drop": m.drop, "size_bytes": int(q.size_bytes), "noise": noise}
        record({"step": "uniform", "option": k, "assignment": {u: list(o) for u in space.units},
                "estimated_noise": noise, "accuracy": m.accuracy, "drop": m.drop, "size_bytes": int(q.size_bytes),
                "latency_ms": lat, "engine": m.engine, "rounding": m.rounding, "quantize_s": round(t_q, 3),
                "evaluate_s": round(m.seconds, 3)})
        del q
        check_deadline("per-layer table")
    return tab


def load_cached(path: str | Path | None, fp: str) -> dict | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc.get("table") if doc.get("fingerprint") == fp else None


def save_cached(path: str | Path | None, fp: str, tab: dict, uniform_trace: list[dict]) -> None:
    if path is None:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": fp, "table": tab, "uniform_trace": uniform_trace}, indent=1))
    tmp.replace(p)


def cached_trace(path: str | Path | None) -> list[dict]:
    return json.loads(Path(path).read_text()).get("uniform_trace", []) if path else []
