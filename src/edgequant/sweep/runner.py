"""The sweep: every recipe through the integer program, measured side by side, then the answer.

Per recipe: quantize (timed), the task metric of the integer program on the whole evaluation set
(computed by the fastest engine verified equal to the interpreter on that row, ``engines``), its
drop against the fp32 model, packed size, latency on the fastest runtime that runs it (ONNX
Runtime where the export path handles the recipe, the reference interpreter otherwise), and how
well the interpreter agrees with the fake-quant simulation. Per layer: SQNR for every recipe,
one-layer-at-a-time sensitivity for the lowest one.

Bounded at real size: each row runs under a time limit (``bounds``; a row over it is ``cut``),
sample counts follow the activation footprint (``footprint``), and only the models the answer may
need are kept.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import io
import importlib.util
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..api import capture_prepared, quantize
from ..deadline import Deadline, TimeLimitExceeded, check_deadline, remaining_s
from ..feeds import as_torch, call_model
from ..errors import CaptureError, EdgequantError, PluginError, UnsupportedOpError
from ..quantized import QuantizedModel
from ..recipes import RECIPES
from . import bounds, engines, footprint, layers, mixed_row, plugins, rss, timing
from .choice import choose, lowest, pareto
from .presets import INT8, Plan, bits, default_qat_epochs, resolve

SCHEMA_VERSION = 1
Progress = Callable[[str, int, int], None]  # (what is happening, steps done, steps total)
RowHook = Callable[[dict], None]  # called with each finished row


@dataclass
class SweepConfig:
    """Everything a sweep depends on; stored in report.json so a run can be reproduced."""

    model: str | None = None  # FILE.py:FUNC or built-in name; None = digits_cnn (pretrained)
    data: str | None = None  # FILE.py:FUNC or "digits"
    metric: str | None = None  # top1 | top5 | agreement | FILE.py:FUNC
    recipes: list[str] | None = None
    preset: str | None = None  # default | all | int8 | lowbit | qat (None = default)
    budget: float = 1.0  # accuracy drop allowed, in points
    out: str = "edgequant-sweep"
    qat_epochs: int | None = None  # None = the preset's (presets.default_qat_epochs)
    iterations: int | None = None  # reconstruction budget for every reconstruction row; None = the preset's
    qat_lr: float | None = None  # None = each QAT recipe's tuned learning rate
    calib_samples: int | None = 512
    eval_samples: int | None = None
    latency_batch: int = 64  # a cap: smaller when one sample's activations are large (footprint.size)
    repeats: int = 5
    layer_samples: int = 256  # eval inputs for per-layer SQNR, simulation and engine checks (a cap, as above)
    sensitivity: bool = True
    rounding: str = "gemmlowp"
    save: bool = True
    fast_backends: tuple[str, ...] = ("onnxruntime",)
    # torch and ONNX Runtime intra-op threads while the sweep runs (None = leave torch's setting and
    # ORT's default, all cores). One by default: on
    # small models the training steps (reconstruction, QAT) ran ~10x slower with 2 threads on a busy
    # 2-core machine (synchronisation, not work), and one-thread latencies compare like for like
    threads: int | None = 1
    max_minutes: float | None = 20.0  # the whole sweep; rows that would overrun are cut, never hang it
    max_row_minutes: float | None = None  # None: an even share of the time left (bounds.row_limit_s)
    mixed: str = "off"  # "size" | "latency": add a row with edgequant.search's answer (sweep.mixed_row)
    mixed_widths: tuple[int, ...] = (8, 4, 2)  # weight widths the search may give a layer


@dataclass
class SweepResult:
    report: dict
    models: dict[str, QuantizedModel] = field(default_factory=dict)  # row label -> quantized model


def _argmax_agree(a: np.ndarray, b: np.ndarray) -> float:
    return 100.0 * float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1))) if a.ndim == 2 else float(np.allclose(a, b)) * 100


def _logits(fn: Callable[[np.ndarray], object], batches, phase: str = "evaluate") -> np.ndarray:
    """Outputs over all batches; checks the deadline with the projected time of the batches left."""
    out, t0 = [], time.perf_counter()
    n = len(batches) if hasattr(batches, "__len__") else None
    for i, (x, _) in enumerate(batches):
        out.append(np.asarray(fn(x.numpy()), np.float32))
        per = (time.perf_counter() - t0) / (i + 1)
        check_deadline(phase, None if n is None else per * (n - i - 1))
    return np.concatenate(out)


class _Scorer:
    """The metric on a whole evaluation set, on one scale (percent) fixed by the fp32 baseline."""

    def __init__(self, name: str, fn: plugins.Metric, y: torch.Tensor) -> None:
        self.name, self.fn, self.y, self.factor = name, fn, y, 1.0

    def fix_scale(self, baseline_raw: float) -> None:
        self.factor = 100.0 if abs(baseline_raw) <= 1.0 else 1.0

    def __call__(self, logits, y: torch.Tensor | None = None) -> float:
        t = torch.as_tensor(np.asarray(logits, np.float32)) if not isinstance(logits, torch.Tensor) else logits.float()
        return self.factor * self.fn(t, self.y if y is None else y)


def _capture(model: torch.nn.Module, example: torch.Tensor, spec: str | None):
    """Capture once, up front, so a model that cannot be traced fails before any work is done.

    torch.export prints its partial graph to stderr when tracing fails; that dump is held back
    (our error says what to change) and passed through only when capture succeeds.
    """
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            graph = capture_prepared(model, example)
    except (CaptureError, UnsupportedOpError) as e:
        raise PluginError(f"--model {spec or 'digits_cnn'}: the model cannot be quantized as written. {e}") from e
    sys.stderr.write(held.getvalue())
    return graph


def _chance_note(metric_name: str, logits: torch.Tensor, accuracy: float) -> list[str]:
    """A note when the fp32 model scores near chance on --data: the usual cause is preprocessing
    or labels that differ from training, and every drop in the table is measured against it."""
    if metric_name not in ("top1", "top5") or logits.ndim != 2 or logits.shape[1] < 2:
        return []
    k = int(logits.shape[1])
    chance = 100.0 * min(1 if metric_name == "top1" else 5, k) / k
    if chance >= 100.0 or accuracy > 2 * chance:
        return []
    return [f"the fp32 model scores {accuracy:.2f}% {metric_name} on --data, close to chance ({chance:.2f}% for {k} "
            "classes): check that the data's labels and preprocessing (normalization, channel order, size) match "
            "what the model was trained with -- every drop below is measured against this baseline"]


def _fast_path(q: QuantizedModel, xb: np.ndarray, ref: np.ndarray, cfg: SweepConfig, row: dict) -> None:
    """Time each fast runtime that runs this recipe; note why the others were skipped."""
    for b in cfg.fast_backends:
        try:
            fn = timing.fast_runner(q, b, cfg.threads)
            y = fn(xb)
        except Exception as e:  # a runtime that cannot take this recipe is reported, not fatal
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            row["runtime_notes"][b] = f"{type(e).__name__}: {msg}"[:200]
            continue
        row["runtime_agreement_pct"][b] = _argmax_agree(y, ref)
        row["latency_by_runtime"][b] = timing.median_ms(lambda: fn(xb), cfg.repeats)


def _quantize(plan: Plan, model, data: plugins.Data, calib_x: list[torch.Tensor], cfg: SweepConfig) -> QuantizedModel:
    recipe = plan.resolved()
    if not plan.qat:
        return quantize(model, recipe, calib_x)
    if data.train is None:
        raise PluginError(f"QAT row {plan.label} needs a training set: make --data return (calib, eval, train)")
    from .. import qat  # present: presets.resolve checked it

    if hasattr(qat, "finetune"):
        res = qat.finetune(copy.deepcopy(model), recipe, data.train, calib_x, epochs=cfg.qat_epochs, lr=cfg.qat_lr,
                           progress=False)
    else:  # the documented prepare -> your loop -> convert path, with the library's plain loop
        from ..training import train_classifier

        res = train_classifier(qat.prepare(copy.deepcopy(model), recipe, calib_x), data.train, epochs=cfg.qat_epochs,
                               lr=cfg.qat_lr or 1e-3, log=None)
    if isinstance(res, QuantizedModel):
        return res
    if isinstance(res, torch.nn.Module):
        return qat.convert(res)
    raise EdgequantError(f"QAT returned a {type(res).__name__}; expected a QuantizedModel or a QAT nn.Module")


def _measure(plan: Plan, model, data: plugins.Data, calib_x, cfg: SweepConfig, score: _Scorer, baseline: dict,
             xb: np.ndarray, layer_x: torch.Tensor, graph, limit_s: float | None,
             say: Callable[[str], None]) -> tuple[dict, QuantizedModel | None]:
    r = plan.resolved()
    wb, ab = bits(r)
    budget = ({"qat_epochs": cfg.qat_epochs} if plan.qat else {}) | (
        {"iterations": r.option("iterations")} if r.option("iterations") is not None else {})
    row: dict = {"recipe": plan.label, "base_recipe": plan.recipe, "qat": plan.qat, "budget": budget, "mode": r.mode,
                 "weight_bits": wb, "act_bits": ab, "act16": r.option("act16"),  # 16-bit tensors beside the 8-bit ones
                 "description": r.description, "status": "ok", "error": None,
                 "cut": None, "extras_cut": None, "limit_s": limit_s, "latency_by_runtime": {}, "runtime_notes": {},
                 "runtime_agreement_pct": {}, "latency_ms": None, "runtime": None, "sim_agreement_pct": None,
                 "sim_max_abs_diff": None, "sim_max_diff_lsb": None, "layers_sqnr": []}
    rss.reset_peak()
    t_row = time.perf_counter()
    q = None
    phases: dict[str, float] = {}  # seconds per phase, to see where a slow row spends its time
    mark = [None, t_row]

    def lap(what: str | None) -> None:
        now = time.perf_counter()
        if mark[0] is not None:
            phases[mark[0]] = round(now - mark[1], 3)
        mark[:] = [what, now]

    def say(what: str, _say=say) -> None:
        lap(what)
        _say(what)

    try:
        with Deadline(limit_s, label=plan.label):
            if limit_s is not None and limit_s <= 0:
                raise TimeLimitExceeded(f"{plan.label}: not started (the sweep's time is spent)", 0.0, 0.0)
            say("quantize")
            t = time.perf_counter()
            q = _quantize(plan, model, data, calib_x, cfg)
            row["quantize_s"] = time.perf_counter() - t
            check_deadline("quantize")
            say("verify the evaluation engine")
            lx = layer_x.numpy()
            t = time.perf_counter()
            ref_lx = np.asarray(q.run(lx, rounding=cfg.rounding), np.float32)
            cache = {cfg.rounding: (ref_lx, time.perf_counter() - t)}
            engine = engines.select(q, lx, cfg.fast_backends, cfg.threads, cfg.rounding, cache)
            row.update(engine.report())
            check_deadline("verify the evaluation engine")
            say(f"evaluate on {engine.name}")
            run = _logits(engine.fn, data.eval)
            row["accuracy"] = score(run)
            row["drop"] = baseline["accuracy"] - row["accuracy"]
            row["size_bytes"] = int(q.size_bytes)
            row["size_ratio"] = row["size_bytes"] / baseline["size_bytes"]
            try:  # the row's numbers are in: past this point running out of time shortens, not cuts, it
                _extras(q, row, cfg, xb, lx, ref_lx, layer_x, graph, say)
            except TimeLimitExceeded as e:
                row["extras_cut"] = e.as_dict()
    except PluginError:
        raise
    except TimeLimitExceeded as e:  # the row is reported as cut, with where and when; the sweep goes on
        q = None
        row.update(status="cut", cut=e.as_dict(), error=str(e))
    except Exception as e:  # one recipe failing must not hide the others; the row says why
        q = None
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
    if row["status"] != "ok":
        for k in ("accuracy", "drop", "size_bytes", "size_ratio", "latency_ms", "runtime", "sim_agreement_pct"):
            row[k] = None
        row["latency_by_runtime"] = {}
        row.setdefault("quantize_s", None)
        row["layers_sqnr"] = []
    lap(None)
    row["phases_s"] = phases
    row["measure_s"] = time.perf_counter() - t_row  # everything this row cost, quantization included
    row["peak_rss_mb"] = round(rss.peak_mb(), 1)
    return row, q


def _extras(q: QuantizedModel, row: dict, cfg: SweepConfig, xb: np.ndarray, lx: np.ndarray, ref_lx: np.ndarray,
            layer_x: torch.Tensor, graph, say: Callable[[str], None]) -> None:
    """Latency, the interpreter-vs-simulation check and per-layer SQNR, in that order of value.

    The interpreter's latency is timed over ``repeats`` runs only when that fits the time left;
    otherwise its first run is the figure (and ``runtime_notes`` says so).
    """
    say("time")
    t = time.perf_counter()
    ref = np.asarray(q.run(xb, rounding=cfg.rounding), np.float32)
    t_ref = time.perf_counter() - t
    if remaining_s() > 3 * t_ref * max(cfg.repeats, 1):
        row["latency_by_runtime"]["interpreter"] = timing.median_ms(lambda: q.run(xb, rounding=cfg.rounding),
                                                                    cfg.repeats, warm=True)  # the run above warmed it
    else:
        row["latency_by_runtime"]["interpreter"] = 1000.0 * t_ref
        row["runtime_notes"]["interpreter"] = "one cold run timed (repeats did not fit the row's time limit)"
    _fast_path(q, xb, ref, cfg, row)
    row["runtime"] = min(row["latency_by_runtime"], key=row["latency_by_runtime"].get)
    row["latency_ms"] = row["latency_by_runtime"][row["runtime"]]
    check_deadline("latency")
    say("simulate")
    # the float64 twin is the slow half of a row: compare it on the first layer_samples inputs
    sim = np.asarray(q.simulate(lx, rounding=cfg.rounding), np.float32)
    row["sim_agreement_pct"] = _argmax_agree(ref_lx, sim)
    diff = float(np.max(np.abs(ref_lx.astype(np.float64) - sim.astype(np.float64)))) if ref_lx.size else 0.0
    oqp = q.program.output_qparams
    row["sim_max_abs_diff"] = diff
    row["sim_max_diff_lsb"] = diff / float(np.max(oqp.scale)) if oqp is not None else None
    check_deadline("simulate")
    if q.recipe.mode != "float":
        say("per-layer SQNR")
        # equalization rescales channels inside the net (the output is unchanged): compare inner
        # tensors with the equalized float graph (``reference_graph``), not the user's
        ref_graph = q.reference_graph if q.recipe.option("equalize") and q.reference_graph is not None else graph
        row["layers_sqnr"] = layers.layer_sqnr(q.program, ref_graph, layer_x, cfg.rounding)


def run_sweep(cfg: SweepConfig, progress: Progress | None = None, on_row: RowHook | None = None) -> SweepResult:
    """Run the whole sweep in memory (no files written; see ``write_outputs``).

    ``progress(what, done, total)`` at every phase; ``on_row(row)`` after every row.
    """
    if cfg.threads is not None and cfg.threads < 1:
        raise PluginError(f"--threads {cfg.threads}: use 1 or more torch threads")
    before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        if cfg.max_minutes is not None and cfg.max_minutes <= 0:
            raise PluginError(f"--max-minutes {cfg.max_minutes}: give the sweep a positive time limit")
        if cfg.max_row_minutes is not None and cfg.max_row_minutes <= 0:
            raise PluginError(f"--max-row-minutes {cfg.max_row_minutes}: give each row a positive time limit")
        with Deadline(None if cfg.max_minutes is None else 60.0 * cfg.max_minutes, label="sweep") as whole:
            return _run_sweep(cfg, whole, progress, on_row)
    finally:
        torch.set_num_threads(before)


def _with_graph_default(plans: list[Plan], cfg: SweepConfig, graph) -> tuple[list[Plan], list[str]]:
    """A preset sweep always shows what ``quantize`` gives this graph by default (a transformer's
    ``w8a16`` is in no preset): added after the 8-bit rows when the preset lacks it."""
    from ..defaults import recipe_for

    name, why = recipe_for(graph)
    if cfg.recipes or any(p.label == name for p in plans) or name not in RECIPES:
        return plans, []
    int8 = [k for k, p in enumerate(plans) if p.recipe in INT8]
    at = (int8[-1] + 1) if int8 else 1
    return plans[:at] + [Plan(name)] + plans[at:], [f"row {name} added: it is quantize's default for this model ({why})"]


TRANSFORMER_LOWBIT = "dyn4-g16-gptq"  # the W4A8 that holds on a BERT-style encoder (bench/RESULTS.md, issue 16)


def _fit_reconstruction(plans: list[Plan], cfg: SweepConfig, graph) -> tuple[list[Plan], list[str]]:
    """On a graph the block/layer reconstruction cannot cut (attention, LayerNorm, token inputs) a
    preset's AdaRound/BRECQ rows would only fail: leave them out, with a note, and show the
    transformer's W4A8 row (GPTQ, which needs only layer Hessians) instead."""
    from ..reconstruct.pipeline import needs_graph_pass

    blocks = [p for p in plans if RECIPES[p.recipe].option("reconstruct") in ("adaround", "brecq")]
    if cfg.recipes or not blocks or not needs_graph_pass(graph):
        return plans, []
    kept = [p for p in plans if p not in blocks]
    note = (f"rows {', '.join(p.label for p in blocks)} left out: AdaRound/BRECQ reconstruct conv nets block by block "
            "and this model has attention/LayerNorm/token inputs")
    if TRANSFORMER_LOWBIT in RECIPES and not any(p.recipe == TRANSFORMER_LOWBIT for p in kept):
        kept.append(Plan(TRANSFORMER_LOWBIT))
        note += f"; row {TRANSFORMER_LOWBIT} (GPTQ 4-bit weights, per-token 8-bit activations) added instead"
    return kept, [note]


def _run_sweep(cfg: SweepConfig, whole: Deadline, progress: Progress | None = None,
               on_row: RowHook | None = None) -> SweepResult:
    t0 = time.perf_counter()
    say = progress or (lambda *_: None)
    if cfg.budget < 0:
        raise PluginError(f"--budget {cfg.budget}: the allowed accuracy drop must be >= 0 points")
    if cfg.mixed not in mixed_row.MODES:
        raise PluginError(f"--mixed {cfg.mixed!r}: choose one of {', '.join(mixed_row.MODES)}")
    cfg = replace(cfg, preset=cfg.preset or (None if cfg.recipes else "default"),  # the effective values, for the report
                  qat_epochs=default_qat_epochs(cfg.preset, cfg.recipes) if cfg.qat_epochs is None else cfg.qat_epochs)
    plans = resolve(cfg.recipes, cfg.preset, cfg.qat_epochs, cfg.iterations)
    total = len(plans) + 2 + int(cfg.sensitivity) + int(cfg.mixed != "off")
    say("loading model and data", 0, total)
    model = plugins.load_model(cfg.model)
    data = plugins.load_data(cfg.data, cfg.calib_samples, cfg.eval_samples, want_train=any(p.qat for p in plans))
    notes = []
    if data.train is None and any(p.qat for p in plans) and not cfg.recipes and cfg.preset in (None, "default", "all"):
        # QAT rows the preset added on its own: leave them out rather than fail the whole sweep
        plans = resolve(cfg.recipes, cfg.preset, cfg.qat_epochs, cfg.iterations, has_train=False)
        total = len(plans) + 2 + int(cfg.sensitivity) + int(cfg.mixed != "off")
        notes.append("QAT rows left out: --data returned no training set; return (calib, eval, train) to include them")
    metric_name, metric_fn = plugins.load_metric(cfg.metric)
    calib_x = [x for x, _ in data.calib]
    graph = _capture(model, calib_x[0][:2], cfg.model)
    plans, note = _with_graph_default(plans, cfg, graph)
    notes += note
    plans, note = _fit_reconstruction(plans, cfg, graph)
    notes += note
    total = len(plans) + 2 + int(cfg.sensitivity) + int(cfg.mixed != "off")
    eval_x = data.eval_x
    score = _Scorer(metric_name, metric_fn, data.eval_y)
    sizes = footprint.size(graph, cfg.latency_batch, cfg.layer_samples, int(eval_x.shape[0]))
    reps = -(-sizes.latency_batch // eval_x.shape[0])
    xb = eval_x.repeat((reps,) + (1,) * (eval_x.ndim - 1))[: sizes.latency_batch].numpy()
    layer_x = eval_x[: sizes.layer_samples]

    say("fp32 baseline (torch)", 0, total)
    with torch.no_grad():
        try:
            base_logits = torch.cat([call_model(model, x).float() for x, _ in data.eval])
            raw = metric_fn(base_logits, data.eval_y)
            xt = as_torch(xb)
            torch_ms = timing.median_ms(lambda: call_model(model, xt), cfg.repeats)
        except PluginError:
            raise
        except Exception as e:
            raise PluginError(f"--model {cfg.model or 'digits_cnn'} failed on the evaluation data: {type(e).__name__}: {e}") from e
    if metric_name == "agreement":  # top-1 agreement with the fp32 model: its own argmax are the labels
        score.y = base_logits.argmax(1)
        raw = metric_fn(base_logits, score.y)
    score.fix_scale(raw)
    from ..api import float_param_bytes

    fp32_bytes = float_param_bytes(graph)  # the weights (embeddings included), as QuantizedModel.float_size_bytes
    baseline = {"recipe": "fp32 (torch)", "accuracy": score(base_logits), "size_bytes": fp32_bytes,
                "latency_ms": torch_ms, "runtime": "torch"}
    notes += _chance_note(metric_name, base_logits, baseline["accuracy"])

    rows, models = [], {}
    t_rows = time.perf_counter()
    for i, plan in enumerate(plans):
        limit = bounds.row_limit_s(whole, len(plans) - i, cfg.max_row_minutes, cfg.sensitivity)
        step = lambda what, i=i, plan=plan: say(f"{plan.label}: {what}", i + 1, total)  # noqa: E731
        row, q = _measure(plan, model, data, calib_x, cfg, score, baseline, xb, layer_x, graph, limit, step)
        rows.append(row)
        if q is not None:
            models[plan.label] = q
        keep = bounds.needed(rows, cfg.budget, cfg.sensitivity)
        for label in [m for m in models if m not in keep]:  # memory stays bounded by the rows still needed
            del models[label]
        del q
        gc.collect()
        if on_row is not None:
            on_row(row)
    mixed = None
    if cfg.mixed != "off":  # after the uniform rows: the search's answer, measured as a row of its own
        label = f"mixed-{cfg.mixed}"
        step = lambda what: say(f"{label}: {what}", len(plans) + 1, total)  # noqa: E731
        plan, mixed = mixed_row.search_for_sweep(
            cfg, model, data, calib_x, bounds.row_limit_s(whole, 1, cfg.max_row_minutes, cfg.sensitivity), step)
        if plan is None:
            row = mixed_row.failed_row(mixed)
        else:
            row, q = _measure(plan, model, data, calib_x, cfg, score, baseline, xb, layer_x, graph,
                              bounds.row_limit_s(whole, 1, cfg.max_row_minutes, cfg.sensitivity), step)
            row.update(mixed=True, search_s=mixed["search_s"], widths=mixed["layers"])
            if q is not None and row["recipe"] in bounds.needed(rows + [row], cfg.budget, cfg.sensitivity):
                models[row["recipe"]] = q
            del q
        rows.append(row)
        if on_row is not None:
            on_row(row)
    if not any(r["status"] == "ok" for r in rows):
        raise EdgequantError("every recipe failed on this model: " + "; ".join(f"{r['recipe']}: {r['error']}" for r in rows))
    for cost, key in (("size_bytes", "pareto_size"), ("latency_ms", "pareto_latency")):
        front = pareto(rows, cost)
        for r in rows:
            r[key] = r["recipe"] in front

    timings = {"setup_s": t_rows - t0, "rows_s": time.perf_counter() - t_rows}
    t_sens = time.perf_counter()
    sens = None
    low = lowest(rows)
    if cfg.sensitivity and low is not None:
        sens = _sensitivity(models[low["recipe"]], low["recipe"], graph, eval_x, score, base_logits, sizes, cfg,
                            lambda layer: say(f"sensitivity of {low['recipe']}: {layer}", len(plans) + 1, total))
    timings["sensitivity_s"] = time.perf_counter() - t_sens

    sqnr = {}
    for r in rows:
        per_layer = r.pop("layers_sqnr", [])
        if per_layer:
            sqnr[r["recipe"]] = per_layer
    smallest, fastest = choose(rows, cfg.budget)
    report = {
        "schema_version": SCHEMA_VERSION,
        "edgequant_version": __version__,
        "config": {**asdict(cfg), "fast_backends": list(cfg.fast_backends)},
        "model": {"spec": cfg.model or "digits_cnn", "class": type(model).__name__,
                  "input_shape": [None] + list(eval_x.shape[1:]), "graph_nodes": len(graph.nodes)},
        "data": {"spec": cfg.data or "digits", "calib_samples": int(sum(x.shape[0] for x in calib_x)),
                 "eval_samples": int(eval_x.shape[0]), "latency_batch": int(xb.shape[0]),
                 "layer_samples": int(layer_x.shape[0]), "sizing": sizes.report()},
        "metric": {"name": metric_name, "unit": "percent", "scaled_from_fraction": score.factor == 100.0},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads()},
        "baseline": baseline,
        "rows": rows,
        "layers": {"sqnr": sqnr, "sensitivity": sens},
        "mixed": mixed,
        "answer": {"budget_points": cfg.budget, "smallest": _pick(smallest), "fastest": _pick(fastest)},
        "notes": notes,
        "wall_s": None,
        "timings": timings,
    }
    from .report import answer_line

    report["answer"]["line"] = answer_line(report)
    report["wall_s"] = time.perf_counter() - t0
    say("done", total, total)
    return SweepResult(report, models)


def _sensitivity(q: QuantizedModel, label: str, graph, eval_x: torch.Tensor, score: _Scorer, base_logits: torch.Tensor,
                 sizes: footprint.Sizes, cfg: SweepConfig, tick: Callable[[str], None]) -> dict:
    """One layer at a time under ``label`` on the sized sample (drops against fp32 on the same
    sample); cut, and said so, at the sweep's deadline."""
    n = min(eval_x.shape[0] if sizes.sensitivity_samples is None else sizes.sensitivity_samples, eval_x.shape[0])
    bs = int(max(1, min(64, layers.SENSITIVITY_MEMORY_MB * 2**20 // layers.graph_bytes_per_sample(graph))))
    batches = [(eval_x[s:min(s + bs, n)], score.y[s:min(s + bs, n)]) for s in range(0, n, bs)]
    ref = score(base_logits[:n], score.y[:n])
    out = {"recipe": label, "samples": int(n), "fp32_accuracy": ref, "layers": [], "cut": None}
    try:
        per = layers.sensitivity(q.program, graph, batches, score, cfg.rounding, tick)
    except TimeLimitExceeded as e:
        out["cut"] = e.as_dict()
        return out
    for p in per:
        p["accuracy"] = p.pop("score")
        p["drop"] = ref - p["accuracy"]
    out["layers"] = per
    return out


def _pick(r: dict | None) -> dict | None:
    if r is None:
        return None
    keys = ("recipe", "accuracy", "drop", "size_bytes", "size_ratio", "latency_ms", "runtime")
    return {k: r[k] for k in keys} | {"artifact": None}


def artifact_suffix() -> str:
    if importlib.util.find_spec("edgequant.artifact") is None:
        return ".edgequant"
    from .. import artifact

    return getattr(artifact, "SUFFIX", ".edgequant")


def save_answer(result: SweepResult, out: Path) -> list[str]:
    """Save the answer's quantized model(s) next to the report; returns notes for the user.

    Saving is best effort by design: the measurements stand even where the artifact format is
    not available or cannot hold a recipe, and the notes say so instead of failing the sweep.
    """
    notes: list[str] = []
    saved: dict[str, str] = {}
    answer = result.report["answer"]
    for role in ("smallest", "fastest"):
        pick = answer.get(role)
        if pick is None:
            continue
        label = pick["recipe"]
        path = out / ("model-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in label) + artifact_suffix())
        if importlib.util.find_spec("edgequant.artifact") is None:
            if role == "fastest" and label == answer["smallest"]["recipe"]:
                continue
            notes.append(f"{label} not saved: this edgequant has no artifact support yet (edgequant.artifact); "
                         f"quantize it again with `edgequant quantize --recipe {pick['recipe']}` once it has")
            continue
        try:
            if label not in saved:
                result.models[label].save(path)
                saved[label] = str(path)
            pick["artifact"] = saved[label]
        except EdgequantError as e:
            notes.append(f"{label} not saved: {e}")
    answer["notes"] = notes
    return notes
