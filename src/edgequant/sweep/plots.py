"""Sweep plots (matplotlib, Agg: no display needed).

* frontier.png -- accuracy vs packed size and accuracy vs latency, one point per recipe coloured
  by weight width, the Pareto front as a step line, fp32 and the budget as horizontal lines.
* layers.png   -- per-layer SQNR of every recipe, and the one-layer-at-a-time accuracy drop of
  the lowest recipe.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

_BITS_COLOURS = {32: "#444444", 16: "#7f7f7f", 8: "#1f77b4", 4: "#2ca02c", 3: "#bcbd22", 2: "#ff7f0e", 1: "#d62728"}


def _colour(bits: int) -> str:
    return _BITS_COLOURS.get(bits, "#9467bd")


_RUNTIME_MARKERS = {"interpreter": "o", "onnxruntime": "s", "torch": "^"}


def _log_axis(ax, fmt, base: int) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=base, subs=(1.0, 2.0, 5.0) if base == 10 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _ms(v: float) -> str:
    return f"{v:g} ms" if v >= 1 else f"{v * 1000:g} \u00b5s"


def _size(v: float) -> str:
    if v >= 1024**2:
        return f"{v / 1024**2:g} MiB"
    return f"{v / 1024:g} KiB" if v >= 1024 else f"{v:g} B"


def _frontier_axis(ax, rows: list[dict], cost: str, front_key: str, xlabel: str, report: dict) -> None:
    b, budget = report["baseline"], report["answer"]["budget_points"]
    ok = [r for r in rows if r["status"] == "ok"]
    placed: list[tuple[float, float]] = []
    for r in ok:
        x, y = r[cost], r["accuracy"]
        marker = _RUNTIME_MARKERS.get(r["runtime"], "D") if cost == "latency_ms" else "o"
        ax.scatter([x], [y], s=46, color=_colour(r["weight_bits"]), edgecolor="black", linewidth=0.5, zorder=3,
                   marker=marker)
        # nudge labels of points that sit on top of each other (fp32/fp16/dyn8 often do)
        k = sum(1 for px, py in placed if abs(px / x - 1) < 0.25 and abs(py - y) < 1.5)
        placed.append((x, y))
        ax.annotate(r["recipe"], (x, y), xytext=(5, 4 - 10 * k), textcoords="offset points", fontsize=7.5)
    front = sorted((r for r in ok if r.get(front_key)), key=lambda r: r[cost])
    if front:
        ax.plot([r[cost] for r in front], [r["accuracy"] for r in front], drawstyle="steps-post", color="black",
                linewidth=1.2, zorder=2)
        ax.scatter([r[cost] for r in front], [r["accuracy"] for r in front], s=140, facecolor="none",
                   edgecolor="black", linewidth=1.2, zorder=4)
    ax.axhline(b["accuracy"], color="#444444", linestyle="--", linewidth=1)
    ax.axhline(b["accuracy"] - budget, color="#d62728", linestyle=":", linewidth=1.2)
    accs = [r["accuracy"] for r in ok] + [b["accuracy"], b["accuracy"] - budget]
    lo, hi = min(accs), max(accs)
    pad = max(0.5, 0.06 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    if cost == "size_bytes":
        _log_axis(ax, _size, 2)
    else:
        _log_axis(ax, _ms, 10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"accuracy, {report['metric']['name']} (%)")
    ax.grid(True, which="both", alpha=0.25)


def frontier(report: dict, path: Path) -> None:
    rows = report["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    _frontier_axis(axes[0], rows, "size_bytes", "pareto_size", "packed size (weights + qparams, log scale)", report)
    axes[0].set_title("Accuracy vs size")
    runtimes = sorted({r["runtime"] for r in rows if r["status"] == "ok"})
    _frontier_axis(axes[1], rows, "latency_ms", "pareto_latency",
                   f"latency per batch of {report['data']['latency_batch']} (median, log scale; fastest runtime per recipe)",
                   report)
    axes[1].set_title("Accuracy vs latency")
    bits = sorted({r["weight_bits"] for r in rows if r["status"] == "ok"}, reverse=True)
    handles = [Line2D([], [], marker="o", linestyle="", color=_colour(w), markeredgecolor="black",
                      label="fp32" if w == 32 else (f"W{w} (fp16)" if w == 16 else f"W{w} weights")) for w in bits]
    handles += [Line2D([], [], marker=_RUNTIME_MARKERS.get(rt, "D"), linestyle="", color="white", markeredgecolor="black",
                       label=f"on {rt}") for rt in runtimes]
    handles += [Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=10, label="Pareto front"),
                Line2D([], [], color="#444444", linestyle="--", label=f"fp32 ({report['baseline']['accuracy']:.2f}%)"),
                Line2D([], [], color="#d62728", linestyle=":", label=f"budget (-{report['answer']['budget_points']:g} pt)")]
    axes[1].legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.9)
    fig.suptitle(f"edgequant sweep: {report['model']['spec']} ({report['data']['eval_samples']} eval samples)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def layers(report: dict, path: Path) -> None:
    sqnr, sens = report["layers"]["sqnr"], report["layers"]["sensitivity"]
    fig, axes = plt.subplots(2, 1, figsize=(11, 8), constrained_layout=True)
    ax = axes[0]
    names = list(dict.fromkeys(l["layer"] for v in sqnr.values() for l in v))
    idx = {n: i for i, n in enumerate(names)}
    for rec, per in sqnr.items():
        pts = [(idx[l["layer"]], l["sqnr_db"]) for l in per if l["sqnr_db"] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linewidth=1.2, label=rec)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("SQNR vs fp32 (dB, higher is better)")
    ax.set_title("Per-layer SQNR of the integer program (errors accumulate from earlier layers)")
    ax.grid(True, alpha=0.3)
    if sqnr:
        ax.legend(fontsize=7.5, ncol=2, loc="best", title="recipe", title_fontsize=8)
    else:
        ax.text(0.5, 0.5, "no quantized layers in this sweep", ha="center", va="center", transform=ax.transAxes)
    ax = axes[1]
    if sens and sens["layers"]:
        ls = sens["layers"]
        drops = [l["drop"] for l in ls]
        bars = ax.bar(range(len(ls)), drops, color=["#d62728" if d > report["answer"]["budget_points"] else "#1f77b4" for d in drops])
        ax.bar_label(bars, [f"{d:+.2f}" for d in drops], fontsize=8, padding=2)
        ax.set_xticks(range(len(ls)), [f"{l['layer']}\n({l['module'] or l['op']}, W{l['weight_bits']})" for l in ls],
                      rotation=30, ha="right", fontsize=8)
        ax.axhline(report["answer"]["budget_points"], color="#d62728", linestyle=":", linewidth=1.2,
                   label=f"budget ({report['answer']['budget_points']:g} pt)")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title(f"Sensitivity: accuracy drop with only that layer at {sens['recipe']} (all others fp32)")
    else:
        ax.text(0.5, 0.5, "no sensitivity study (no quantized recipe ran, or --no-sensitivity)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_title("Sensitivity")
    ax.set_ylabel(f"drop in {report['metric']['name']} (points)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
