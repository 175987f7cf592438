"""The ``edgequant`` command: a thin layer over the Python API.

    edgequant sweep                                   # built-in digits CNN on real digits data
    edgequant sweep --model my.py:build --data my.py:loaders --budget 1.0 --out runs/x
    edgequant quantize --recipe w8a8-pc -o model.edgequant
    edgequant run model.edgequant --input x.npy --output y.npy
    edgequant export model.edgequant -o model.onnx
    edgequant inspect model.edgequant
    edgequant recipes

Bad input (a plug-in that cannot be loaded, an unknown recipe, a corrupt file) prints one paragraph
and exits with code 2; no traceback for user errors.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

EXIT_USAGE = 2

_PLUGIN_HELP = """\
plug-ins:
  --model FILE.py:FUNC   FUNC() returns a trained torch.nn.Module: one tensor in (N, ...), logits out
  --data  FILE.py:FUNC   FUNC() returns (calib, eval) or (calib, eval, train); each an iterable of
                         (x, y) batches (DataLoader, list, generator). train is used by QAT rows only.
  --metric top1|top5|agreement|FILE.py:FUNC
                         FUNC(logits, y) -> float, called once on the whole eval set (logits float32
                         (N, classes), y the labels). Higher is better; return a fraction in [0, 1] or a
                         percentage (a baseline <= 1 is read as a fraction). Drops are in points.
                         agreement (sweep): top-1 agreement with the fp32 model, no labels needed.
  built-ins: --model digits_cnn|resnet_digits|mobilenet_v2_digits (pretrained), --data digits
"""


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # not a terminal (a pipe, a log file): no width to respect, so do not squeeze the table into 80
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=None if stream.isatty() else 150)


def _process_age_s() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere)."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


_CALLED_AT: float | None = None  # time.monotonic() when main() was called from Python (not the command line)


def _minutes_left(max_minutes: float) -> float:
    """``--max-minutes`` counts from the command's start: from the process's start for the
    ``edgequant`` command (Python and torch imports are spent already), from the ``main(argv)``
    call when Python code (a notebook, a test) runs it in a process that may be hours old."""
    spent = _process_age_s() if _CALLED_AT is None else time.monotonic() - _CALLED_AT
    return max(max_minutes - spent / 60.0, 0.05)


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _write_json(obj: dict, path: str) -> None:
    from .sweep.report import to_json, write_json

    if path == "-":
        sys.stdout.write(to_json(obj) + "\n")
    else:
        write_json(obj, Path(path))


def _artifact_module():
    if importlib.util.find_spec("edgequant.artifact") is None:
        from .errors import ArtifactError

        raise ArtifactError("this edgequant build has no artifact support yet (edgequant.artifact is missing), so "
                            "quantized models cannot be saved or loaded; upgrade edgequant")
    from . import artifact

    return artifact


def _load(path: str):
    p = Path(path)
    if not p.exists():
        from .errors import ArtifactError

        raise ArtifactError(f"artifact {path!r} not found; create one with `edgequant quantize -o {path}`")
    return _artifact_module().load(p)


# ------------------------------------------------------------------------------------------------
def _widths(text: str) -> tuple[int, ...]:
    from .errors import PluginError

    try:
        return tuple(int(w) for w in _csv(text))
    except ValueError:
        raise PluginError(f"--mixed-widths {text!r}: give comma-separated bit widths in 1..8, e.g. 8,4,2") from None


def cmd_sweep(a: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .sweep import SweepConfig, report, run_sweep, write_outputs

    cfg = SweepConfig(model=a.model, data=a.data, metric=a.metric, recipes=_csv(a.recipes) if a.recipes else None,
                      preset=a.preset, budget=a.budget, out=a.out, qat_epochs=a.qat_epochs, iterations=a.iterations,
                      qat_lr=a.qat_lr, threads=a.threads if a.threads > 0 else None,
                      calib_samples=a.calib_samples, eval_samples=a.eval_samples, latency_batch=a.latency_batch,
                      repeats=a.repeats, layer_samples=a.layer_samples, sensitivity=not a.no_sensitivity, rounding=a.rounding, save=not a.no_save,
                      max_minutes=_minutes_left(a.max_minutes) if a.max_minutes > 0 else None,
                      max_row_minutes=a.max_row_minutes, mixed=a.mixed,
                      mixed_widths=_widths(a.mixed_widths))
    to_stdout_json = a.json == "-"
    out_console = _console(stderr=to_stdout_json)
    t0 = time.perf_counter()
    if a.quiet:
        result = run_sweep(cfg)
    elif not sys.stderr.isatty():  # a log file or a pipe: plain lines, one per phase and per row
        from .sweep.lines import PlainProgress

        lines = PlainProgress(sys.stderr)
        result = run_sweep(cfg, lines, lines.row)
    else:
        cols = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn())
        with Progress(*cols, console=_console(stderr=True), transient=True) as prog:
            task = prog.add_task("starting", total=None)

            def progress(what: str, done: int, total: int) -> None:
                prog.update(task, description=what, completed=done, total=total)

            result = run_sweep(cfg, progress)
    paths = write_outputs(result, cfg.out, a.json)
    rep = result.report
    if to_stdout_json:
        _write_json(rep, "-")
    report.print_summary(rep, out_console)
    out_console.print(f"[dim]wrote {', '.join(str(p) for k, p in paths.items() if k != 'json_copy')} "
                      f"in {time.perf_counter() - t0:.1f} s[/dim]")
    return 0


def _eval_accuracy(q, data_spec: str | None, metric: str | None, rounding: str = "gemmlowp") -> tuple[str, float]:
    import numpy as np
    import torch

    from .sweep import plugins

    name, fn = plugins.load_metric(metric)
    if name == "agreement":
        from .errors import PluginError

        raise PluginError("--metric agreement compares with the fp32 model, which only `edgequant sweep` runs; "
                          "use --metric top1, top5 or FILE.py:FUNC here")
    d = plugins.load_data(data_spec)
    logits = torch.from_numpy(np.concatenate([np.asarray(q.run(x.numpy(), rounding=rounding), np.float32) for x, _ in d.eval]))
    v = fn(logits, d.eval_y)
    return name, (100.0 * v if abs(v) <= 1.0 and name not in ("top1", "top5") else v)


def cmd_quantize(a: argparse.Namespace) -> int:
    from . import quantize
    from .sweep import plugins
    from .sweep.report import fmt_bytes

    artifact = _artifact_module()  # fail before the work if models cannot be saved
    model = plugins.load_model(a.model)
    d = plugins.load_data(a.data, a.calib_samples, None)
    t = time.perf_counter()
    q = quantize(model, a.recipe, [x for x, _ in d.calib])
    secs = time.perf_counter() - t
    metric, acc = _eval_accuracy(q, a.data, a.metric)
    out = a.output or f"model-{q.recipe.name}" + getattr(artifact, "SUFFIX", ".edgequant")
    q.save(out)
    ratio = q.compression
    res = {"recipe": q.recipe.name, "size_bytes": q.size_bytes, "size_ratio": ratio, "metric": metric,
           "accuracy": acc, "quantize_s": secs, "artifact": str(out)}
    c = _console()
    c.print(f"{q.recipe.name}: {metric} {acc:.2f}% (integer program), {fmt_bytes(q.size_bytes)}"
            f"{f' = {ratio:.3f}x fp32' if ratio else ''}, quantized in {secs:.2f} s -> {out}")
    if a.json:
        _write_json(res, a.json)
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    import numpy as np

    from .errors import InputError

    q = _load(a.artifact)
    c = _console()
    if a.input:
        try:
            x = np.load(a.input)
        except (OSError, ValueError) as e:
            raise InputError(f"--input {a.input!r}: cannot read it as a .npy array ({e}); save inputs with numpy.save "
                             "(numpy.savez with one array per input name for a model with keyword inputs)") from e
        if isinstance(x, np.lib.npyio.NpzFile):  # keyword inputs (token ids, masks): one array per input name
            with x:
                x = {k: x[k] for k in x.files}
        t = time.perf_counter()
        y = np.asarray(q.run(x if isinstance(x, dict) else x.astype(np.float32), rounding=a.rounding, backend=a.backend))
        ms = 1000 * (time.perf_counter() - t)
        if a.output:
            np.save(a.output, y)
        pred = y.argmax(axis=1).tolist() if y.ndim == 2 else None
        shape = {k: list(v.shape) for k, v in x.items()} if isinstance(x, dict) else list(x.shape)
        c.print(f"ran {a.artifact} on {shape} with {a.backend} in {ms:.1f} ms -> output {tuple(y.shape)}"
                + (f", saved to {a.output}" if a.output else ""))
        if pred is not None and len(pred) <= 32:
            c.print(f"argmax: {pred}")
        res = {"artifact": a.artifact, "input_shape": shape, "output_shape": list(y.shape), "ms": ms,
               "backend": a.backend, "argmax": pred, "output": a.output}
    else:
        metric, acc = _eval_accuracy(q, a.data, a.metric, a.rounding)
        c.print(f"{a.artifact}: {metric} {acc:.2f}% on the evaluation set of --data {a.data or 'digits'}")
        res = {"artifact": a.artifact, "metric": metric, "accuracy": acc, "data": a.data or "digits"}
    if a.json:
        _write_json(res, a.json)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    q = _load(a.artifact)
    q.export(a.output, format=a.format, **({"style": a.style} if a.style else {}))
    _console().print(f"exported {a.artifact} ({q.recipe.name}) as {a.format} -> {a.output}")
    if a.json:
        _write_json({"artifact": a.artifact, "format": a.format, "output": a.output}, a.json)
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from .sweep.report import fmt_bytes

    c = _console()
    if a.artifact:
        q = _load(a.artifact)
        p = q.program
        c.print(f"{a.artifact}: recipe {q.recipe.name} ({q.recipe.mode}), {len(p.instrs)} instructions, "
                f"{fmt_bytes(q.size_bytes)}, input " + ", ".join(f"{n} {p.tensors[n].dtype}{list(p.tensors[n].shape)}"
                                                                  for n in p.inputs))
        c.print(p.summary(), markup=False)
        res = {"artifact": a.artifact, "recipe": q.recipe.to_dict(), "size_bytes": q.size_bytes,
               "input_shape": list(p.input_shape),
               "instrs": [{"op": i.op, "node": i.node, "inputs": i.inputs, "output": i.output,
                           "arrays": {k: [str(v.dtype), list(v.shape)] for k, v in i.arrays.items()}} for i in p.instrs]}
    else:
        from .sweep import plugins
        from .sweep.runner import _capture

        model = plugins.load_model(a.model)
        d = plugins.load_data(a.data, 2, 2)
        g = _capture(model, d.calib[0][0][:2], a.model)
        c.print(f"--model {a.model or 'digits_cnn'}: {len(g.nodes)} nodes after BN folding and activation fusion")
        c.print(g.summary(), markup=False)
        res = {"model": a.model or "digits_cnn",
               "nodes": [{"name": n.name, "op": n.op, "inputs": n.inputs, "module": n.module, "shape": list(n.shape)}
                         for n in g.nodes]}
    if a.json:
        _write_json(res, a.json)
    return 0


def cmd_recipes(a: argparse.Namespace) -> int:
    from rich.table import Table

    from .recipes import RECIPES
    from .sweep.presets import INT8, bits, is_qat_recipe, lowbit_names

    low = set(lowbit_names())
    t = Table(title="registered recipes")
    for col in ("recipe", "mode", "W/A bits", "presets", "description"):
        t.add_column(col)
    res = []
    for n, r in RECIPES.items():
        wb, ab = bits(r)
        presets = ["all"] + (["int8"] if n in INT8 else []) + (["lowbit", "qat"] if n in low else []) + \
            (["qat"] if is_qat_recipe(r) else [])
        t.add_row(n, r.mode, f"{wb}/{ab}", ",".join(presets), r.description)
        res.append({"recipe": n, "mode": r.mode, "weight_bits": wb, "act_bits": ab, "presets": presets,
                    "description": r.description})
    _console().print(t)
    if a.json:
        _write_json({"recipes": res}, a.json)
    return 0


# ------------------------------------------------------------------------------------------------
def _plugin_args(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        p.add_argument("--model", metavar="FILE.py:FUNC", help="model plug-in (default: built-in digits_cnn, pretrained)")
    p.add_argument("--data", metavar="FILE.py:FUNC", help="data plug-in (default: built-in digits, real data)")
    p.add_argument("--metric", metavar="top1|top5|agreement|FILE.py:FUNC",
                   help="task metric (default top1; agreement = top-1 agreement with the fp32 model, sweep only)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="edgequant", formatter_class=fmt,
                                 description="How far can this model be quantized? Integer-only quantization, measured.",
                                 epilog="Run `edgequant sweep` for the whole frontier on the built-in digits CNN.")
    ap.add_argument("--version", action="version", version=f"edgequant {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("sweep", help="every recipe measured side by side, and the answer", formatter_class=fmt,
                       description="Quantize the model with every recipe, run each integer program, and report "
                                   "accuracy, size and latency, per-layer SQNR and sensitivity, plots, and the "
                                   "smallest and fastest recipe within --budget.", epilog=_PLUGIN_HELP)
    _plugin_args(s)
    s.add_argument("--recipes", metavar="A,B,...", help="comma-separated recipe names (suffix +qat for QAT)")
    s.add_argument("--preset", choices=("default", "all", "int8", "lowbit", "qat"),
                   help="recipe set (default: one row of every family, reconstruction at --iterations 100 and QAT "
                        "for 1 epoch; all: every recipe at its own budget)")
    s.add_argument("--budget", type=float, default=1.0, help="allowed accuracy drop vs fp32, points (default 1.0)")
    s.add_argument("--out", default="edgequant-sweep", help="output folder (default ./edgequant-sweep)")
    s.add_argument("--json", metavar="PATH", help="also write report.json to PATH ('-' = stdout)")
    s.add_argument("--qat-epochs", type=int, default=None,
                   help="QAT fine-tuning epochs (default 1 in the default sweep, else 3; 0 leaves QAT rows out)")
    s.add_argument("--iterations", type=int, default=None,
                   help="reconstruction (AdaRound/BRECQ) iterations per layer or block for every reconstruction row "
                        "(default 100 in the default sweep, else each recipe's own)")
    s.add_argument("--qat-lr", type=float, default=None,
                   help="QAT learning rate (default: each QAT recipe's tuned rate)")
    s.add_argument("--calib-samples", type=int, default=512, help="calibration samples used (default 512)")
    s.add_argument("--eval-samples", type=int, default=None, help="cap on evaluation samples (default all)")
    s.add_argument("--latency-batch", type=int, default=64, help="batch size for latency (default 64)")
    s.add_argument("--repeats", type=int, default=5, help="latency repeats, median reported (default 5)")
    s.add_argument("--layer-samples", type=int, default=256,
                   help="eval samples for per-layer SQNR and the integer-vs-simulation check (default 256)")
    s.add_argument("--threads", type=int, default=1,
                   help="torch and ONNX Runtime intra-op threads for the sweep (default 1: small models train and time best on one; "
                        "0 = the libraries' defaults)")
    s.add_argument("--rounding", choices=("gemmlowp", "onnxruntime"), default="gemmlowp")
    s.add_argument("--no-sensitivity", action="store_true", help="skip the one-layer-at-a-time study")
    s.add_argument("--mixed", choices=("size", "latency", "off"), default="off",
                   help="add a 'mixed-<objective>' row: per-layer widths from edgequant.search, the smallest "
                        "(size) or fastest (latency) mix measured within --budget (default off)")
    s.add_argument("--mixed-widths", default="8,4,2", metavar="8,4,2",
                   help="weight widths --mixed may give a layer (default 8,4,2; 1 = XNOR)")
    s.add_argument("--no-save", action="store_true", help="do not save the answer's artifact")
    s.add_argument("--max-minutes", type=float, default=20.0,
                   help="time limit of the whole sweep in minutes (default 20; 0 = none): rows that would overrun are "
                        "cut and reported as cut, the sweep still finishes")
    s.add_argument("--max-row-minutes", type=float, default=None,
                   help="time limit per row in minutes (default: an even share of the time left)")
    s.add_argument("--quiet", action="store_true",
                   help="no progress (default: a live display on a terminal, plain lines on stderr otherwise)")
    s.set_defaults(fn=cmd_sweep)

    q = sub.add_parser("quantize", help="quantize a model with one recipe and save the artifact", formatter_class=fmt,
                       epilog=_PLUGIN_HELP)
    _plugin_args(q)
    q.add_argument("--recipe", default=None, help="recipe name (default: w8a8-pc, or w8a16 for a model with LayerNorm "
                                                   "or attention; see `edgequant recipes`)")
    q.add_argument("-o", "--output", help="artifact path (default model-<recipe>.edgequant)")
    q.add_argument("--calib-samples", type=int, default=512)
    q.add_argument("--json", metavar="PATH", help="write the result as JSON ('-' = stdout)")
    q.set_defaults(fn=cmd_quantize)

    r = sub.add_parser("run", help="run a saved artifact on a .npy input, or evaluate it on --data")
    r.add_argument("artifact")
    r.add_argument("--input", metavar="X.npy", help="inputs (N, ...) float32; without it, evaluate on --data")
    r.add_argument("--output", metavar="Y.npy", help="where to save the outputs")
    r.add_argument("--backend", default="interpreter", help="interpreter (the reference) or onnxruntime")
    r.add_argument("--rounding", choices=("gemmlowp", "onnxruntime"), default="gemmlowp")
    _plugin_args(r, model=False)
    r.add_argument("--json", metavar="PATH")
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("export", help="write a saved artifact for another runtime (ONNX)")
    e.add_argument("artifact")
    e.add_argument("-o", "--output", required=True, help="output file, e.g. model.onnx")
    e.add_argument("--format", default="onnx", help="onnx (default) or tflite where supported")
    e.add_argument("--style", choices=("qdq", "qoperator"), help="ONNX form: qdq (default) or qoperator")
    e.add_argument("--json", metavar="PATH")
    e.set_defaults(fn=cmd_export)

    i = sub.add_parser("inspect", help="show a saved artifact's program, or a model's captured graph")
    i.add_argument("artifact", nargs="?", help="artifact to inspect; omit to inspect --model instead")
    _plugin_args(i)
    i.add_argument("--json", metavar="PATH")
    i.set_defaults(fn=cmd_inspect)

    rc = sub.add_parser("recipes", help="list the registered recipes and their presets")
    rc.add_argument("--json", metavar="PATH")
    rc.set_defaults(fn=cmd_recipes)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    global _CALLED_AT
    _CALLED_AT = None if argv is None else time.monotonic()
    ap = build_parser()
    a = ap.parse_args(argv)
    if getattr(a, "fn", None) is None:
        ap.print_help()
        return EXIT_USAGE
    import logging

    import torch  # noqa: F401  (first, so that its logging setup is done before we quiet it)

    from .errors import EdgequantError

    # torch's own warnings while tracing a user model (symbolic shapes, export) repeat what our
    # error says; the CLI prints that one paragraph instead
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        return a.fn(a)
    except EdgequantError as e:
        print(f"edgequant: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # unreadable input, unwritable --out: the user's paths, not a bug
        print(f"edgequant: error: {e.strerror or e}: {e.filename or ''} ({type(e).__name__}); check the path "
              "and its permissions", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("edgequant: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
