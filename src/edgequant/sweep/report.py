"""Sweep results as text: report.json (versioned schema), report.md, the terminal table, the answer.

report.json, schema_version 1 (top level): schema_version, edgequant_version, config, model, data,
metric, machine, baseline, rows, layers, answer, wall_s. Non-finite numbers are written as null.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def _clean(v: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def to_json(report: dict) -> str:
    return json.dumps(_clean(report), indent=2, allow_nan=False)


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_json(report) + "\n")
    tmp.replace(path)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.2f} MiB"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _bits(r: dict) -> str:
    if r["mode"] in ("float", "fp16"):
        return "fp32" if r["mode"] == "float" else "fp16"
    if r["mode"] == "dynamic":
        return f"W{r['weight_bits']} dyn"
    if r.get("act16") == "all":  # every activation with an int16 kernel (w8a16: W8A16)
        return f"W{r['weight_bits']}A16"
    wide = "/16" if r.get("act16") else ""  # act16 recipes: some activations 16-bit (w8a16-res: W8A8/16)
    return f"W{r['weight_bits']}A{r['act_bits']}{wide}"


def _front(r: dict) -> str:
    return "+".join(k for k, key in (("size", "pareto_size"), ("lat", "pareto_latency")) if r.get(key))


def _budget(r: dict) -> str:
    """'100 iterations' / '1 QAT epoch': how long a row's training ran."""
    words = {"iterations": ("iteration", "iterations"), "qat_epochs": ("QAT epoch", "QAT epochs")}
    return ", ".join(f"{v} {words.get(k, (k, k))[v != 1]}" for k, v in r["budget"].items())


def answer_line(report: dict) -> str:
    """One sentence: the smallest and the fastest recipe within the budget, and where they are."""
    a, b = report["answer"], report["baseline"]
    budget, metric = a["budget_points"], report["metric"]["name"]
    if a["smallest"] is None:
        return (f"No recipe stays within {budget:g} points of fp32 {metric} ({b['accuracy']:.2f}%); "
                "raise --budget or try QAT (--preset qat --qat-epochs N).")

    def desc(p: dict) -> str:
        return f"{p['recipe']} ({p['accuracy']:.2f}%, drop {p['drop']:+.2f}, {fmt_bytes(p['size_bytes'])} = {p['size_ratio']:.3f}x fp32, " + (
            f"{p['latency_ms']:.2f} ms on {p['runtime']})" if p.get("latency_ms") is not None else "latency not measured)")

    s, f = a["smallest"], a["fastest"]
    line = f"Within {budget:g} point{'s' if budget != 1 else ''} of fp32 {metric} {b['accuracy']:.2f}%: smallest {desc(s)}"
    line += "; it is also the fastest." if f["recipe"] == s["recipe"] else f"; fastest {desc(f)}."
    saved = sorted({p["artifact"] for p in (s, f) if p.get("artifact")})
    if saved:
        line += " Saved: " + ", ".join(saved) + "."
    return line


def _why(r: dict) -> str:
    """Why a row has no numbers: the error, or where and when it was cut."""
    c = r.get("cut")
    if r["status"] == "cut" and c:
        proj = f", projected {c['projected_s']:.0f} s" if c.get("projected_s") is not None else ""
        return f"cut in {c['phase']} at {c['elapsed_s']:.0f} s (limit {c['limit_s']:.0f} s{proj})"
    return r.get("error") or ""


def _engine(r: dict) -> str:
    """Which engine produced the accuracy ('ort' verified, or the interpreter) and its rounding."""
    e = r.get("eval_engine", "interpreter")
    return {"onnxruntime": "ort"}.get(e, "interp" if e == "interpreter" else e) + "/" + str(r.get("eval_rounding", ""))[:3]


def table(report: dict) -> Table:
    b = report["baseline"]
    t = Table(title=f"edgequant sweep - {report['model']['spec']} on {report['data']['eval_samples']} eval samples "
                    f"({report['metric']['name']}, latency per batch of {report['data']['latency_batch']})",
              title_justify="left", box=box.SIMPLE_HEAD)
    for col, just in (("recipe", "left"), ("bits", "left"), ("acc %", "right"), ("drop", "right"), ("size", "right"),
                      ("x fp32", "right"), ("latency ms", "right"), ("runtime", "left"), ("acc by", "left"),
                      ("int=sim %", "right"), ("quant s", "right"), ("Pareto", "left")):
        t.add_column(col, justify=just, no_wrap=col in ("recipe", "bits"))
    t.add_row(b["recipe"], "fp32", f"{b['accuracy']:.2f}", "", fmt_bytes(b["size_bytes"]), "1.000",
              f"{b['latency_ms']:.2f}", b["runtime"], "torch", "", "", "", style="dim")
    picks = {p["recipe"] for p in (report["answer"]["smallest"], report["answer"]["fastest"]) if p}
    for r in report["rows"]:
        if r["status"] != "ok":
            t.add_row(r["recipe"], _bits(r), f"[red]{r['status']}[/red]", "", "", "", "", "", "", "", "", _why(r)[:60])
            continue
        over = r["drop"] > report["answer"]["budget_points"] + 1e-9
        t.add_row(("* " if r["recipe"] in picks else "") + r["recipe"], _bits(r), f"{r['accuracy']:.2f}",
                  f"[red]{r['drop']:+.2f}[/red]" if over else f"{r['drop']:+.2f}", fmt_bytes(r["size_bytes"]),
                  f"{r['size_ratio']:.3f}", _num(r["latency_ms"], ".2f"), r["runtime"] or "-", _engine(r),
                  _num(r["sim_agreement_pct"], ".1f"),
                  _num(r["quantize_s"], ".2f"), _front(r), style="bold green" if r["recipe"] in picks else None)
    return t


def print_summary(report: dict, console: Console) -> None:
    console.print(table(report))
    console.print(f"[dim]* = the answer; drop in points vs fp32 (red: over budget); int=sim: argmax agreement of the "
                  f"integer program and its fake-quant simulation on {report['data']['layer_samples']} inputs; "
                  "Pareto: on the accuracy-vs-size/latency front; acc by: the engine that computed the accuracy "
                  "(ort = ONNX Runtime verified equal to the interpreter on that row, interp = the interpreter) / "
                  "its rounding (gem = gemmlowp, onn = onnxruntime)[/dim]")
    sens = report["layers"]["sensitivity"]
    if sens and sens.get("cut"):
        console.print(f"Sensitivity study under {sens['recipe']} cut: {sens['cut']['phase']} at {sens['cut']['elapsed_s']:.0f} s.")
    if sens:
        worst = max(sens["layers"], key=lambda l: l["drop"], default=None)
        if worst is not None:
            console.print(f"Most sensitive layer under {sens['recipe']}: {worst['layer']} ({worst['module'] or worst['op']}) "
                          f"alone costs {worst['drop']:+.2f} points.")
    for n in report.get("notes", []):
        console.print(f"note: {n}")
    budgets = [f"{r['recipe']} ({_budget(r)})" for r in report["rows"] if r.get("budget")]
    if budgets:
        console.print(f"[dim]training budgets: {'; '.join(budgets)}[/dim]")
    console.print()
    console.print(f"[bold]Answer:[/bold] {report['answer']['line']}")
    for n in report["answer"].get("notes", []):
        console.print(f"  note: {n}")
    console.print_json(to_json(report["answer"]))


def markdown(report: dict) -> str:
    b, a = report["baseline"], report["answer"]
    lines = [f"# edgequant sweep: {report['model']['spec']}", "",
             f"Data `{report['data']['spec']}`: {report['data']['calib_samples']} calibration, "
             f"{report['data']['eval_samples']} evaluation samples. Metric {report['metric']['name']} (percent). "
             f"Budget {a['budget_points']:g} points. Latency: median of {report['config']['repeats']} runs of a batch of "
             f"{report['data']['latency_batch']}. edgequant {report['edgequant_version']}, {report['machine']['platform']}, "
             f"sweep wall time {report['wall_s']:.1f} s.", "",
             "## Answer", "", a["line"], ""]
    lines += [f"- note: {n}" for n in a.get("notes", [])]
    lines += ["", "```json", json.dumps(_clean(a), indent=2), "```", "", "## Recipes", "",
              "| recipe | bits | accuracy % | drop | size | x fp32 | latency ms | runtime | accuracy by | int=sim % | quantize s | peak RSS MB | Pareto |",
              "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|",
              f"| {b['recipe']} | fp32 | {b['accuracy']:.2f} | | {fmt_bytes(b['size_bytes'])} | 1.000 | {b['latency_ms']:.2f} | torch | torch | | | | |"]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['recipe']} | {_bits(r)} | {r['status']}: {_why(r)} | | | | | | | | | {_num(r.get('peak_rss_mb'), '.0f')} | |")
            continue
        lines.append(f"| {r['recipe']} | {_bits(r)} | {r['accuracy']:.2f} | {r['drop']:+.2f} | {fmt_bytes(r['size_bytes'])} | "
                     f"{r['size_ratio']:.3f} | {_num(r['latency_ms'], '.2f')} | {r['runtime'] or '-'} | {r.get('eval_engine', 'interpreter')} "
                     f"({r.get('eval_rounding')}) | {_num(r['sim_agreement_pct'], '.1f')} | "
                     f"{_num(r['quantize_s'], '.2f')} | {_num(r.get('peak_rss_mb'), '.0f')} | {_front(r)} |")
    engines = [f"- {r['recipe']}: {r['eval_engine_note']}" for r in report["rows"] if r.get("eval_engine_note")]
    if engines:
        lines += ["", "Accuracy engines (ONNX Runtime only where verified equal to the interpreter on that row):", ""] + engines
    budgets = [f"- {r['recipe']}: {_budget(r)}" for r in report["rows"] if r.get("budget")]
    if budgets:
        lines += ["", "Training budgets (reconstruction iterations per layer/block, QAT epochs):", ""] + budgets
    lines += _mixed_lines(report.get("mixed"))
    lines += [f"- note: {n}" for n in report.get("notes", [])]
    notes = [(r["recipe"], k, v) for r in report["rows"] for k, v in r.get("runtime_notes", {}).items()]
    if notes:
        lines += ["", "Runtimes not used:", ""] + [f"- {rec}: {k}: {v}" for rec, k, v in notes]
    lines += ["", "![accuracy vs size and latency](frontier.png)", "", "## Layers", ""]
    sqnr = report["layers"]["sqnr"]
    if sqnr:
        recs = list(sqnr)
        names = list(dict.fromkeys(l["layer"] for v in sqnr.values() for l in v))
        lines += ["SQNR (dB) of each quantized layer's output in the integer program vs fp32:", "",
                  "| layer | " + " | ".join(recs) + " |", "|---|" + "---:|" * len(recs)]
        for n in names:
            cells = []
            for rec in recs:
                v = next((l["sqnr_db"] for l in sqnr[rec] if l["layer"] == n), None)
                cells.append("exact" if v is None and any(l["layer"] == n for l in sqnr[rec]) else _num(v, ".1f"))
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    sens = report["layers"]["sensitivity"]
    if sens and sens.get("cut"):
        lines += ["", f"Sensitivity study under `{sens['recipe']}` cut: {sens['cut']['phase']} at {sens['cut']['elapsed_s']:.0f} s."]
    if sens:
        lines += ["", f"One layer at a time under `{sens['recipe']}` (all other layers fp32, {sens.get('samples', '')} samples):", "",
                  "| layer | module | op | weight bits | accuracy % | drop |", "|---|---|---|---:|---:|---:|"]
        lines += [f"| {l['layer']} | {l['module']} | {l['op']} | {l['weight_bits']} | {l['accuracy']:.2f} | {l['drop']:+.2f} |"
                  for l in sens["layers"]]
    lines += ["", "![per-layer SQNR and sensitivity](layers.png)", ""]
    return "\n".join(lines)


def _mixed_lines(mx: dict | None) -> list[str]:
    """The mixed row's search: widths per layer and candidates (``--mixed``)."""
    if not mx:
        return []
    if mx.get("status") != "ok":
        return ["", f"Mixed precision ({mx['row']}): {mx['status']}: {mx.get('error')}"]
    widths = ", ".join(f"{l['module']} W{l['weight_bits']}A{l['act_bits']}" for l in mx["layers"])
    return ["", f"Mixed precision ({mx['row']}, edgequant.search, objective {mx['objective']}): measured drop "
            f"{mx['drop']:+.2f} with {mx['candidates']} candidates measured in {mx['search_s']:.1f} s; widths: {widths}"]
