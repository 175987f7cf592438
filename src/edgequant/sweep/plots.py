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


def _place_labels(ax, points: list[tuple[float, float, str, str]], fontsize: float = 7.5, avoid=()) -> list[str]:
    """Label every point with its name where that overlaps no other label or marker (greedy, display
    space); where every spot is taken, with its short number instead. Returns the numbered ones as
    ``"n name"`` for a key under the panel."""
    fig = ax.figure
    fig.canvas.draw()  # settle the layout so that data -> display transforms are final
    to_pt = 72.0 / fig.dpi
    box = ax.get_window_extent()
    ax_box = (box.x0 * to_pt, box.y0 * to_pt, box.x1 * to_pt, box.y1 * to_pt)
    anchors = [tuple(v * to_pt for v in ax.transData.transform((x, y))) for x, y, *_ in points]
    taken = [(px - 6, py - 6, px + 6, py + 6) for px, py in anchors]  # the markers themselves
    for artist in avoid:
        e = artist.get_window_extent()
        taken.append((e.x0 * to_pt, e.y0 * to_pt, e.x1 * to_pt, e.y1 * to_pt))
    candidates = [(6, 2), (6, -10), (-6, 2), (-6, -10), (6, 10), (6, -18), (-6, 10), (-6, -18), (6, 18), (6, -26),
                  (-6, 18), (-6, -26), (14, 26), (14, -34)]

    def overlap(b1, b2) -> float:
        w = min(b1[2], b2[2]) - max(b1[0], b2[0])
        h = min(b1[3], b2[3]) - max(b1[1], b2[1])
        return w * h if w > 0 and h > 0 else 0.0

    def place(text: str, px: float, py: float):
        w, h = 0.56 * fontsize * len(text), fontsize
        best, best_cost = None, None
        for dx, dy in candidates:
            x0 = px + dx if dx > 0 else px + dx - w
            b = (x0, py + dy, x0 + w, py + dy + h)
            outside = (b[0] < ax_box[0]) + (b[2] > ax_box[2]) + (b[1] < ax_box[1]) + (b[3] > ax_box[3])
            cost = sum(overlap(b, t) for t in taken) + 1000.0 * outside
            if best_cost is None or cost < best_cost - 1e-9:
                best, best_cost = (dx, dy, b), cost
            if cost == 0:
                break
        return best, best_cost

    keyed = []
    for (x, y, text, num), (px, py) in zip(points, anchors):
        best, cost = place(text, px, py)
        if cost > 0 or abs(best[1]) > 12:  # crowded: a number (listed in the key) reads better than
            # overlapping names or names on long leader lines
            best, cost_num = place(num, px, py)
            keyed.append(f"{num} {text}")
            text = num
        dx, dy, b = best
        taken.append(b)
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                    ha="left" if dx > 0 else "right", va="bottom",
                    arrowprops=dict(arrowstyle="-", color="#999999", linewidth=0.5) if abs(dy) > 12 else None)
    return keyed


def _frontier_axis(ax, rows: list[dict], cost: str, front_key: str, xlabel: str, report: dict) -> list:
    """Draw one frontier panel; returns the point labels (placed once the figure layout is final)."""
    b, budget = report["baseline"], report["answer"]["budget_points"]
    ok = [r for r in rows if r["status"] == "ok"]
    accs = [r["accuracy"] for r in ok]
    # zoom on the interesting band: recipes far below fp32 sit on the bottom edge as down-triangles,
    # labelled with their real accuracy, instead of squashing everyone else into one line
    floor = b["accuracy"] - max(8.0, 4.0 * budget)
    shown = [a for a in accs if a >= floor] + [b["accuracy"], b["accuracy"] - budget]
    lo, hi = min(shown), max(shown)
    pad = max(0.3, 0.08 * (hi - lo))
    clipped = any(a < floor for a in accs)
    y_min = (lo - 3 * pad) if clipped else lo - pad
    edge = lo - 2 * pad

    def y_of(r) -> float:
        return r["accuracy"] if r["accuracy"] >= floor else edge

    labels = []
    number = {r["recipe"]: str(i) for i, r in enumerate(rows, 1)}  # the same in both panels
    for r in ok:
        if r.get(cost) is None:  # latency not measured (time limit): nothing to place on this axis
            continue
        below = r["accuracy"] < floor
        marker = "v" if below else (_RUNTIME_MARKERS.get(r["runtime"], "D") if cost == "latency_ms" else "o")
        ax.scatter([r[cost]], [y_of(r)], s=46, color=_colour(r["weight_bits"]), edgecolor="black", linewidth=0.5,
                   zorder=3, marker=marker)
        labels.append((r[cost], y_of(r), f"{r['recipe']} ({r['accuracy']:.1f}%)" if below else r["recipe"],
                       number[r["recipe"]]))
    front = sorted((r for r in ok if r.get(front_key)), key=lambda r: r[cost])
    if front:
        ax.plot([r[cost] for r in front], [y_of(r) for r in front], drawstyle="steps-post", color="black",
                linewidth=1.2, zorder=2)
        ax.scatter([r[cost] for r in front], [y_of(r) for r in front], s=150, facecolor="none",
                   edgecolor="black", linewidth=1.2, zorder=4)
    ax.axhline(b["accuracy"], color="#444444", linestyle="--", linewidth=1)
    ax.axhline(b["accuracy"] - budget, color="#d62728", linestyle=":", linewidth=1.2)
    if clipped:
        ax.axhspan(y_min, lo - pad, color="#eeeeee", zorder=0)
        ax.text(0.5, (edge - y_min) / (hi + pad - y_min), f"below {floor:.1f}% (not to scale)", transform=ax.transAxes,
                fontsize=7, color="#666666", va="center", ha="center", gid="band")
    ax.set_ylim(y_min, hi + pad)
    if clipped:  # no accuracy ticks inside the not-to-scale band
        ax.set_yticks([t for t in ax.get_yticks() if lo - pad <= t <= hi + pad])
        ax.set_ylim(y_min, hi + pad)
    if cost == "size_bytes":
        _log_axis(ax, _size, 2)
    else:
        _log_axis(ax, _ms, 10)
    xs = [r[cost] for r in ok]
    ax.set_xlim(min(xs) / 1.25, max(xs) * 1.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"accuracy, {report['metric']['name']} (%)")
    ax.grid(True, which="both", alpha=0.25)
    return labels


def frontier(report: dict, path: Path) -> None:
    rows = report["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    labels = [_frontier_axis(axes[0], rows, "size_bytes", "pareto_size", "packed size (weights + qparams, log scale)",
                             report)]
    axes[0].set_title("Accuracy vs size")
    runtimes = sorted({r["runtime"] for r in rows if r["status"] == "ok"})
    labels += [_frontier_axis(axes[1], rows, "latency_ms", "pareto_latency",
                   f"latency per batch of {report['data']['latency_batch']} (median, log scale; fastest runtime per recipe)",
                   report)]
    axes[1].set_title("Accuracy vs latency")
    bits = sorted({r["weight_bits"] for r in rows if r["status"] == "ok"}, reverse=True)
    handles = [Line2D([], [], marker="o", linestyle="", color=_colour(w), markeredgecolor="black",
                      label="fp32" if w == 32 else (f"W{w} (fp16)" if w == 16 else f"W{w} weights")) for w in bits]
    handles += [Line2D([], [], marker=_RUNTIME_MARKERS.get(rt, "D"), linestyle="", color="white", markeredgecolor="black",
                       label=f"on {rt}") for rt in runtimes]
    handles += [Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=10, label="Pareto front"),
                Line2D([], [], color="#444444", linestyle="--", label=f"fp32 ({report['baseline']['accuracy']:.2f}%)"),
                Line2D([], [], color="#d62728", linestyle=":", label=f"budget (-{report['answer']['budget_points']:g} pt)")]
    if any(ax.patches for ax in axes):  # a "far below" band was drawn
        handles.append(Line2D([], [], marker="v", linestyle="", color="#bbbbbb", markeredgecolor="black",
                              label="far below fp32 (not to scale)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    fig.suptitle(f"edgequant sweep: {report['model']['spec']} ({report['data']['eval_samples']} eval samples)")
    for ax, pts in zip(axes, labels):
        keyed = _place_labels(ax, pts, avoid=[t for t in ax.texts if t.get_gid() == "band"])
        if keyed:  # the crowded points' numbers, under the panel's x label
            lines, line = [], "labels: "
            for k in keyed:
                if len(line) + len(k) > 95:
                    lines.append(line.rstrip(", "))
                    line = ""
                line += k + ", "
            lines.append(line.rstrip(", "))
            ax.annotate("\n".join(lines), (0.0, 0.0), xycoords="axes fraction", xytext=(0, -42),
                        textcoords="offset points", va="top", ha="left", fontsize=7.5, color="#333333")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


_STYLES = ("-", "--", ":", "-.")
_MARKS = ("o", "s", "^", "D", "v", "P")


def layers(report: dict, path: Path) -> None:
    sqnr, sens = report["layers"]["sqnr"], report["layers"]["sensitivity"]
    bits_of = {r["recipe"]: r["weight_bits"] for r in report["rows"]}
    mixed = report.get("mixed") if (report.get("mixed") or {}).get("status") == "ok" else None
    n_max = max([len({l["layer"] for v in sqnr.values() for l in v})] + [len((sens or {}).get("layers") or [])]
                + [len(mixed["layers"]) if mixed else 0])
    width = min(MAX_WIDTH_IN, max(12.0, 0.25 * n_max))  # an ImageNet net has ~65 layers: widen, don't cram
    fig, axes = plt.subplots(3 if mixed else 2, 1, figsize=(width, 12.5 if mixed else 8.5), constrained_layout=True)
    if mixed:
        _mixed_widths(axes[2], mixed)
    ax = axes[0]
    names = list(dict.fromkeys(l["layer"] for v in sqnr.values() for l in v))
    idx = {n: i for i, n in enumerate(names)}
    seen: dict[int, int] = {}
    for rec, per in sqnr.items():
        pts = [(idx[l["layer"]], l["sqnr_db"]) for l in per if l["sqnr_db"] is not None]
        if not pts:
            continue
        wb = bits_of.get(rec, 0)
        k = seen[wb] = seen.get(wb, -1) + 1  # same width, same colour; line style and marker tell them apart
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=_colour(wb), linestyle=_STYLES[k % len(_STYLES)],
                marker=_MARKS[k % len(_MARKS)], linewidth=1.3, markersize=5, label=rec)
    _layer_ticks(ax, names)
    ax.set_ylabel("SQNR vs fp32 (dB, higher is better)")
    ax.set_title("Per-layer SQNR of each recipe's integer program (errors accumulate from earlier layers)")
    ax.grid(True, alpha=0.3)
    if sqnr:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="recipe (colour = weight bits)",
                  title_fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no quantized layers in this sweep", ha="center", va="center", transform=ax.transAxes)
    ax = axes[1]
    budget = report["answer"]["budget_points"]
    if sens and sens["layers"]:
        ls = sens["layers"]
        drops = [l["drop"] for l in ls]
        bars = ax.bar(range(len(ls)), drops, color=["#d62728" if d > budget else "#1f77b4" for d in drops])
        if len(ls) <= MANY_LAYERS:
            ax.bar_label(bars, [f"{d:+.2f}" for d in drops], fontsize=8, padding=2)
            ax.set_xticks(range(len(ls)), [f"{l['layer']}\n({l['module'] or l['op']}, W{l['weight_bits']})" for l in ls],
                          fontsize=8)
        else:  # per-bar numbers would overlap: the bars' heights and the layer names carry it
            _layer_ticks(ax, [f"{l['module'] or l['layer']} W{l['weight_bits']}" for l in ls])
        ax.axhline(budget, color="#d62728", linestyle=":", linewidth=1.2, label=f"budget ({budget:g} pt)")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.legend(handles=[Line2D([], [], color="#d62728", linestyle=":", label=f"budget ({budget:g} pt)"),
                           Line2D([], [], color="#d62728", linewidth=6, label="over budget alone"),
                           Line2D([], [], color="#1f77b4", linewidth=6, label="within budget")],
                  fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set_title(f"Sensitivity: accuracy drop with only that layer quantized as in {sens['recipe']} (all others fp32)")
        ax.margins(y=0.12)
    else:
        ax.text(0.5, 0.5, "no sensitivity study (no quantized recipe ran, or --no-sensitivity)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_title("Sensitivity")
    ax.set_ylabel(f"drop in {report['metric']['name']} (points)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


MANY_LAYERS = 24  # beyond this, layer names go vertical and small, and per-bar numbers are left out
MAX_WIDTH_IN = 40.0


def _layer_ticks(ax, labels: list[str]) -> None:
    """One tick per layer: slanted at 8 pt for a small net, vertical at 6 pt for a deep one."""
    if len(labels) <= MANY_LAYERS:
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    else:
        ax.set_xticks(range(len(labels)), labels, rotation=90, ha="center", fontsize=6)
    ax.set_xlim(-0.7, len(labels) - 0.3)


def _mixed_widths(ax, mixed: dict) -> None:
    """The widths ``edgequant.search`` chose per layer (bars: weight bits; labels: W/A)."""
    ls = mixed["layers"]
    wbits = [l["weight_bits"] for l in ls]
    bars = ax.bar(range(len(ls)), wbits, color=[_colour(w) for w in wbits], edgecolor="black", linewidth=0.6)
    if len(ls) <= MANY_LAYERS:
        ax.bar_label(bars, [f"W{l['weight_bits']}A{l['act_bits']}" for l in ls], fontsize=8, padding=2)
    _layer_ticks(ax, [l["module"] if len(ls) <= MANY_LAYERS else f"{l['module']} W{l['weight_bits']}A{l['act_bits']}"
                      for l in ls])
    ax.set_ylabel("weight bits")
    ax.set_ylim(0, 9.5)
    ax.set_title(f"{mixed['row']}: widths chosen by edgequant.search ({mixed['objective']} under a "
                 f"{mixed['budget']:g}-point budget; measured drop {mixed['drop']:+.2f}, {mixed['size_bytes']:,d} bytes)")
    ax.grid(True, axis="y", alpha=0.3)
