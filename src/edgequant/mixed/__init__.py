"""Mixed precision under an accuracy budget: ``edgequant.search`` (this package: ``edgequant.mixed``).

    res = eq.search(model, calib, test, budget=1.0, objective="size", widths=(8, 4, 2))
    res.recipe      # a frozen, named Recipe with one LayerOverride per layer
    res.quantized   # its QuantizedModel (res.quantized.save(path) stores the recipe)

1. ``table``: per layer and option, the measured output noise of that layer alone, its packed
   bytes and (latency objective) its measured time; every uniform program is measured whole.
2. ``solve``: an integer program (``scipy.optimize.milp``) picks widths minimising bytes or
   milliseconds with the summed noise under the allowance that the measured points say keeps the
   drop within the budget.
3. Verify: the candidate's *integer program* runs on the evaluation set (verified engine).
   Repair: while its measured drop is over budget, widen the most sensitive layer one step and
   measure again. Refine: with the new measured points, solve again (excluding what was tried);
   keep it only if it measures within budget and beats the best.
4. The answer is the best *measured* candidate within budget, uniform programs included.

Deterministic: the same model, data, arguments and ``seed`` (which picks the sensitivity subset)
give the same recipe and the same trace figures (times aside).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Iterable

import torch

from ..api import capture_prepared, quantize
from ..errors import BudgetError, RecipeError
from ..recipes import Recipe
from . import solve as solver
from . import table as tables
from .measure import Evaluator, calib_list, eval_batches
from .result import SearchResult
from .space import Assignment, Option, Space, options, recipe_for, search_base, units

OBJECTIVES = ("size", "latency")
Progress = Callable[[str, int, int], None]


def _check(budget: float, objective: str, max_candidates: int) -> None:
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not math.isfinite(budget) or budget < 0:
        raise RecipeError(f"budget={budget!r}: the allowed accuracy drop must be a finite number of points >= 0, "
                          "e.g. budget=1.0")
    if objective not in OBJECTIVES:
        raise RecipeError(f"objective={objective!r}: choose 'size' (packed bytes) or 'latency' (measured ms)")
    if max_candidates < 1:
        raise RecipeError(f"max_candidates={max_candidates}: allow at least one candidate beyond the uniform programs")


def search(model: torch.nn.Module, calib: Iterable, eval: Iterable, budget: float = 1.0, objective: str = "size",
           widths=(8, 4, 2), metric="top1", base: "str | Recipe | None" = None, *, act_widths=(8,), seed: int = 0,
           sensitivity_samples: int | None = 512, max_candidates: int = 12, refine: int = 2, name: str | None = None,
           rounding: str = "gemmlowp", backends: tuple[str, ...] = ("onnxruntime",), threads: int | None = None,
           latency_batch: int = 64, repeats: int = 5, cache: str | None = None,
           progress: "Progress | bool | None" = None) -> SearchResult:
    """The smallest (``objective="size"``) or fastest (``"latency"``) per-layer mix of ``widths``
    (weights) and ``act_widths`` (each layer's output) whose *measured* drop of ``metric`` on
    ``eval`` is within ``budget`` points of the fp32 model.

    ``calib``: calibration inputs (as for ``quantize``); ``eval``: (x, y) batches (``metric``:
    ``top1`` | ``top5`` | ``agreement`` | ``FILE.py:FUNC`` | a callable ``fn(logits, y)``).
    ``base``: the recipe whose other settings every layer keeps (default: ``w8a8-pc`` with MSE
    weight clips, see ``space.search_base``). ``sensitivity_samples``: eval samples for the
    per-layer study (a seeded random subset). ``max_candidates``: candidates measured after the
    uniform programs. ``cache``: a JSON file for the per-layer table, reused when the model, data
    sizes and settings match. ``progress``: ``True`` for plain lines on stderr, or a callable
    ``(what, done, total)`` such as the sweep's. Raises ``BudgetError`` when not even the widest
    option meets the budget.
    """
    t0 = time.perf_counter()
    _check(budget, objective, max_candidates)
    base_r = search_base(base)
    opts = options(widths, act_widths)
    if progress is True:
        from ..sweep.lines import PlainProgress

        progress = PlainProgress(sys.stderr, every_s=10.0)
    total = len(opts) + max_candidates
    done = [0]

    def say(what: str) -> None:
        if progress:
            progress(f"search: {what}", done[0], total)

    model = model.eval()
    calib_x = calib_list(calib)
    ev = Evaluator(model, eval_batches(eval), metric, rounding, backends, threads,
                   latency_batch=latency_batch, repeats=repeats)
    graph = capture_prepared(model, calib_x[0][:2])
    space = Space(base_r, tuple(units(graph)), tuple(opts))
    rname = name or f"mixed-{objective}-{base_r.name}"
    desc = (f"per-layer widths from edgequant.search: {objective} under a {budget:g}-point {ev.name} budget, "
            f"base {base_r.name}, widths {tuple(sorted({w for w, _ in opts}, reverse=True))}, "
            f"activations {tuple(sorted({a for _, a in opts}, reverse=True))}")

    trace: list[dict] = []

    def record(c: dict) -> None:
        c["n"] = len(trace)
        trace.append(c)
        done[0] += 1

    fp = tables.fingerprint(graph, space, sensitivity_samples, seed, sum(x.shape[0] for x in calib_x),
                            int(ev.x.shape[0]), ev.name, rounding)
    tab = tables.load_cached(cache, fp)
    if tab is not None and objective == "latency" and not tab.get("ms"):
        tab = None  # a size search's table has no per-layer times; measure them (the cache is rewritten)
    if tab is not None:
        say("per-layer table from cache")
        for c in tables.cached_trace(cache):
            record(dict(c, cached=True))
    else:
        tab = tables.build(model, graph, space, calib_x, ev, sensitivity_samples, seed, objective == "latency", say, record)
        tables.save_cached(cache, fp, tab, [dict(c) for c in trace])

    U, key = list(space.units), tables.key
    noise = {u: {o: float(tab["noise"][u][key(o)]) for o in opts} for u in U}
    nbytes = {u: {o: float(tab["bytes"][u][key(o)]) for o in opts} for u in U}
    cost = nbytes if objective == "size" else _latency_costs(tab, U, opts, space.widest)
    tie = None if objective == "size" else nbytes
    points = [(c["estimated_noise"], c["drop"]) for c in trace]
    tried: list[Assignment] = [{u: tuple(o) for u, o in c["assignment"].items()} for c in trace]
    best: dict = {"q": None, "c": None}
    objective_key = "size_bytes" if objective == "size" else "latency_ms"

    def total_noise(a: Assignment) -> float:
        return sum(noise[u][a[u]] for u in U)

    def measure(a: Assignment, step: str) -> dict:
        say(f"{step} candidate {len(trace) + 1}: quantize")
        r = recipe_for(base_r, a, rname, desc)
        t = time.perf_counter()
        q = quantize(model, r, calib_x)
        t_q = time.perf_counter() - t
        say(f"{step} candidate {len(trace) + 1}: evaluate")
        m, eng = ev.measure(q, f"search {step}")
        n = total_noise(a)
        c = {"step": step, "assignment": {u: list(a[u]) for u in U}, "estimated_noise": n,
             "estimated_drop": solver.estimate(points, n), "accuracy": m.accuracy, "drop": m.drop,
             "size_bytes": int(q.size_bytes), "latency_ms": ev.latency_ms(eng) if objective == "latency" else None,
             "engine": m.engine, "rounding": m.rounding, "quantize_s": round(t_q, 3), "evaluate_s": round(m.seconds, 3)}
        record(c)
        points.append((n, m.drop))
        tried.append(dict(a))
        if c["drop"] <= budget + 1e-9 and (best["c"] is None or _better(c, best["c"], objective_key)):
            best.update(q=q, c=c, eng=eng)
        return c

    def solve_once() -> Assignment | None:
        limit = solver.allowance(points, budget)
        return solver.solve(U, opts, noise, cost, tie, limit, forbid=tried)

    n_cand = 0
    a = solve_once()
    if a is not None:
        c = measure(a, "solve")
        n_cand += 1
        while c["drop"] > budget + 1e-9 and n_cand < max_candidates:
            a = _repair(space, a, noise)
            if a is None:
                break
            c = measure(a, "repair")
            n_cand += 1
    refines = probes = 0
    while n_cand < max_candidates:
        a, step = solve_once(), "refine"
        if a is None and probes < MAX_PROBES:  # no room under the estimate: measure a small step instead
            a, step = _probe(U, noise, cost, trace, budget, tried), "probe"
        if a is None:
            break
        if step == "refine":
            if refines >= refine:
                break
            if best["c"] is not None and objective == "size" and sum(nbytes[u][a[u]] for u in U) + tab["const_bytes"] >= best["c"]["size_bytes"]:
                break  # nothing smaller left under the allowance
            refines += 1
        else:
            probes += 1
        measure(a, step)
        n_cand += 1

    uniform_best = [c for c in trace if c["step"] == "uniform" and c["drop"] <= budget + 1e-9]
    if best["c"] is None and not uniform_best:
        widest = min((c for c in trace if c["step"] == "uniform"), key=lambda c: c["estimated_noise"], default=None)
        raise BudgetError(f"no program within a {budget:g}-point {ev.name} budget: the widest option measured "
                          f"{'?' if widest is None else format(widest['drop'], '.2f')} points of drop "
                          f"(fp32 {ev.fp32:.2f}); raise the budget, add wider widths (e.g. widths=(8, 6, 4)), or "
                          "use a stronger base recipe")
    final = best["c"]
    for c in uniform_best:  # a uniform program may beat every mixed one; then it is the answer
        if final is None or _better(c, final, objective_key):
            final = c
    if final is not best["c"]:  # re-quantize the winner under the result's name (cheap: one quantize)
        a = {u: tuple(o) for u, o in final["assignment"].items()}
        q = quantize(model, recipe_for(base_r, a, rname, desc), calib_x)
        m, eng = ev.measure(q, "search final")
        final = dict(final, accuracy=m.accuracy, drop=m.drop, size_bytes=int(q.size_bytes))
    else:
        q, eng = best["q"], best["eng"]
    lat = final.get("latency_ms")
    if lat is None:
        say("latency of the answer")
        lat = ev.latency_ms(eng)
    say("done")
    return SearchResult(recipe=q.recipe, quantized=q, accuracy=final["accuracy"], drop=final["drop"],
                        size_bytes=int(q.size_bytes), latency_ms=lat, trace=trace, fp32_accuracy=ev.fp32,
                        budget=float(budget), objective=objective, metric=ev.name, engine=eng.name,
                        search_s=time.perf_counter() - t0, table=tab)


LATENCY_TOL = 0.10  # per-layer times within 10% of the widest option's count as equal (timing noise)


def _latency_costs(tab: dict, units: list[str], opts: list[Option], widest: Option) -> dict:
    """Per-layer ms per option; differences within ``LATENCY_TOL`` of the widest option's time are
    timing noise on a shared machine, so they tie, and the bytes tie-break picks the smaller."""
    out = {}
    for u in units:
        ref = float(tab["ms"][u][tables.key(widest)])
        out[u] = {}
        for o in opts:
            v = float(tab["ms"][u][tables.key(o)])
            out[u][o] = ref if abs(v - ref) <= LATENCY_TOL * ref else v
    return out


def _better(c: dict, than: dict, k: str) -> bool:
    """Lower objective first; measured latencies within ``LATENCY_TOL`` tie (then fewer bytes wins)."""
    a, b = c.get(k), than.get(k)
    by_size = (c["size_bytes"], -c["accuracy"]) < (than["size_bytes"], -than["accuracy"])
    if a is None or b is None:
        return by_size
    if k == "latency_ms" and abs(a - b) <= LATENCY_TOL * min(a, b):
        return by_size
    return (a, c["size_bytes"], -c["accuracy"]) < (b, than["size_bytes"], -than["accuracy"])


PROBE_NOISE = 0.25  # a probe adds at most this fraction of its starting program's summed noise
MAX_PROBES = 3


def _probe(units: list[str], noise: dict[str, dict[Option, float]], cost: dict[str, dict[Option, float]],
           trace: list[dict], budget: float, tried: list[Assignment]) -> Assignment | None:
    """From the cheapest measured program within budget, the narrowings that save the most cost per
    unit of added noise, while the added noise stays under ``PROBE_NOISE`` of its own (else the
    single best narrowing); None when both were tried.

    Why: when a uniform program's measured drop already equals the budget (EfficientNet-Lite1:
    w8a16-res at 1.0 point on 200 crops), the envelope through the measured points leaves no noise
    allowance, so the integer program finds nothing, although a little more noise may flip no
    further sample. Measuring one such step makes it a point of the envelope (or repair widens it).
    """
    ok = [c for c in trace if c["drop"] <= budget + 1e-9]
    if not ok:
        return None
    start = {u: tuple(o) for u, o in min(ok, key=lambda c: sum(cost[u][tuple(c["assignment"][u])] for u in units))
             ["assignment"].items()}
    moves = []
    for u in units:
        for o in noise[u]:
            saved, added = cost[u][start[u]] - cost[u][o], max(noise[u][o] - noise[u][start[u]], 0.0)
            if saved > 0:
                moves.append((added / saved, added, u, o))
    moves.sort(key=lambda m: (m[0], m[2], m[3]))
    if not moves:
        return None
    for allowed in (PROBE_NOISE * sum(noise[u][start[u]] for u in units), moves[0][1]):
        out, spent = dict(start), 0.0
        for _, added, u, o in moves:
            if out[u] == start[u] and spent + added <= allowed:
                out[u], spent = o, spent + added
        if out == start:  # not even one narrowing fits: take the best one alone
            out[moves[0][2]] = moves[0][3]
        if out not in tried:
            return out
    return None


def _repair(space: Space, a: Assignment, noise: dict[str, dict[Option, float]]) -> Assignment | None:
    """``a`` with its most sensitive layer one step wider: the step that removes the most noise."""
    best = None
    for u in space.units:
        for w in space.wider(a[u]):
            gain = noise[u][a[u]] - noise[u][w]
            if best is None or gain > best[0]:
                best = (gain, u, w)
    if best is None:
        return None
    out = dict(a)
    out[best[1]] = best[2]
    return out


__all__ = ["search", "SearchResult", "OBJECTIVES"]
