"""Cross-layer equalization (recipe option ``equalize``), after Nagel et al. 2019 (DFQ, arXiv 1906.04721).

Why: a per-tensor activation grid is as coarse as its widest channel. On EfficientNet-Lite1 the
residual streams (project convs joined by adds) and the ReLU6 maps span 10-100x between channels,
so the narrow channels get a handful of levels. Channel ``i`` of a conv's output can be multiplied
by ``d_i > 0`` and every reader's input channel ``i`` divided by it: ``W_A[i] *= d_i, b_A[i] *=
d_i, W_B[:, i] /= d_i`` (B read through a zero ``pad``, or ``mean -> reshape`` into a linear).
Convs whose outputs meet in residual adds share one channel space, so they form one *group*
(producers, the adds, every reader); a lone conv and its readers is a group of one.

How ``d`` is chosen (data, not weights): DFQ balances the per-channel *weight* ranges of A and B;
with per-channel weights that balance is moot (a per-channel grid is invariant to a row scale),
and what is left is the activation. So ``r_i`` = the channel's largest magnitude over the group's
tensors on the calibration data, ``R = max_i r_i``, ``d_i = (R / r_i) ** alpha`` (option
``equalize_alpha``, default 0.5: DFQ's geometric mean; a reader's column scaled by ``1/d_i``
loses resolution on its per-output-channel grid, and ``alpha < 1`` leaves each channel headroom
above its calibrated maximum before the per-tensor grid clips it). ``d_i`` is in [1, MAX_SCALE].

The fused activation must commute with the scale. Identity and ReLU do, exactly. ReLU6 does not:
``clamp(d a, 0, 6) != d clamp(a, 0, 6)`` once ``d a > 6``. Here ``1 <= d_i <= R / r_i``, so the two
differ only where ``a_i > 6 r_i / R >= r_i``: beyond the channel's calibrated maximum. Exact on
the calibration data (tested); off it, such a channel is clipped. ``equalize="exact"`` skips
groups with a ReLU6 (or other bounded) producer and changes the float function nowhere. TFLite's
fused clamps are per tensor, so a per-channel ReLU6 bound is not expressible in the program.
Measured on Lite1 (bench/RESULTS.md): ``"exact"`` 96.0 -> 97.0%; an earlier version that fully
equalized the ReLU6 -> depthwise pairs (alpha 1) lost 2.5 points (clipping beyond the calibrated maxima).
"""
from __future__ import annotations

import numpy as np
import torch

from ..calibrate import iter_batches
from ..errors import CalibrationError, RecipeError
from ..feeds import float_inputs
from ..graph_exec import GraphModule
from ..ir import Graph, Node
from ..recipes import Recipe

MODES = ("data", "exact")
MAX_SCALE = 64.0  # a dead channel (r_i ~ 0) must not blow up A's weights and bias
ALPHA = 0.5


def _mode(recipe: Recipe) -> str | None:
    m = recipe.option("equalize")
    if m in (None, False, "none"):
        return None
    if m is True:
        return "data"
    if m not in MODES:
        raise RecipeError(f"recipe {recipe.name!r}: equalize={m!r}; use True / 'data' (ReLU6 pairs within their "
                          f"calibrated range), 'exact' (identity/ReLU pairs only) or leave it unset")
    return m


def _commutes(a: Node, mode: str) -> bool:
    """Does A's fused activation commute with a positive per-channel scale (>= 1 for 'data')?"""
    act = a.attrs.get("act")
    if act is None or (act[0] == 0 and act[1] == float("inf")):
        return True
    return mode == "data" and act[0] == 0 and np.isfinite(act[1])


def _reads(graph: Graph, readers: dict[str, list[Node]], t: Node) -> list[tuple[Node, list[Node]]] | None:
    """The gemms that read tensor ``t`` channel for channel, each with the nodes between (a zero ``pad``,
    or ``mean -> reshape`` into a linear); None when some reader is neither such a chain nor an add."""
    c = t.shape[1]
    out = []
    for r in readers.get(t.name, []):
        if r.op == "add":
            continue
        chain: list[Node] = []
        b: Node | None = r
        while b is not None and b.op in ("pad", "mean", "reshape") and len(chain) < 2:
            if b.op == "pad" and (b.attrs.get("value", 0) != 0 or any(tuple(p) != (0, 0) for p in list(b.attrs["pads"])[:2])):
                return None
            if b.op == "reshape" and tuple(b.shape[1:]) != (c,):
                return None
            chain.append(b)
            nxt = readers.get(b.name, [])
            b = nxt[0] if len(nxt) == 1 and b.name != graph.output else None
        if b is None or b.inputs[0] != (chain[-1].name if chain else t.name) or b.inputs.count(b.inputs[0]) != 1:
            return None
        if b.op == "conv" and b.attrs.get("dims", 2) == 2 and all(n.op == "pad" for n in chain):
            g = b.attrs["groups"]
            if not (b.params["weight"].shape[1] * g == c and (g == 1 or g == c)):
                return None
        elif not (b.op == "linear" and [n.op for n in chain] == ["mean", "reshape"] and b.params["weight"].shape[1] == c):
            return None
        out.append((b, chain))
    return out


def find_groups(graph: Graph, mode: str = "data") -> list[tuple[list[Node], list[Node], list[Node]]]:
    """(producers, tensors, consumers): convs whose outputs are joined by residual adds (one channel
    space: scaling channel i of one scales it in all), every tensor of it read channel for channel
    by gemms (``_reads``) or by the group's adds. A lone conv with its readers is a group of one."""
    by = graph.by_name()
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in set(n.inputs):
            readers.setdefault(i, []).append(n)
    seen: set[str] = set()
    groups = []
    for start in graph.nodes:
        if start.op != "conv" or start.name in seen:
            continue
        members, todo, ok = {}, [start.name], True
        while todo:
            t = by[todo.pop()]
            if t.name in members:
                continue
            members[t.name] = t
            if t.name == graph.output or (t.op == "conv" and (t.attrs.get("dims", 2) != 2 or not _commutes(t, mode))):
                ok = False
            elif t.op == "add":
                ok = ok and "act" not in t.attrs and len(t.inputs) == 2 and t.inputs[0] != t.inputs[1]
                todo += list(t.inputs)
            elif t.op != "conv":
                ok = False
            todo += [r.name for r in readers.get(t.name, []) if r.op == "add"]
        seen |= set(members)
        if not ok:
            continue
        consumers: list[Node] = []
        for t in members.values():
            reads = _reads(graph, readers, t)
            if reads is None:
                ok = False
                break
            consumers += [b for b, _ in reads]
        if ok and consumers:
            groups.append(([t for t in members.values() if t.op == "conv"], list(members.values()), consumers))
    return groups


def channel_ranges(graph: Graph, names: set[str], calib) -> dict[str, np.ndarray]:
    """Per output channel, the largest |value| of each named node on the calibration data."""
    out: dict[str, np.ndarray] = {}

    def hook(node: Node, y: torch.Tensor) -> torch.Tensor:
        if node.name in names:
            m = y.detach().abs().transpose(0, 1).reshape(y.shape[1], -1).amax(dim=1).double().numpy()
            out[node.name] = m if node.name not in out else np.maximum(out[node.name], m)
        return y

    gm = GraphModule(graph)
    with torch.no_grad():
        for x in iter_batches(calib):
            if len(x):
                gm(float_inputs(x), hook)
    if not out and names:
        raise CalibrationError("equalization needs a non-empty calibration set")
    return out


def scales(r: np.ndarray, alpha: float) -> np.ndarray:
    """``d_i = (R / r_i) ** alpha`` in [1, MAX_SCALE] (1 for dead channels)."""
    r = np.where(np.isfinite(r), r, 0.0)  # NaN inputs: calibration rejects them right after
    big = float(r.max()) if r.size else 0.0
    if big <= 0:
        return np.ones_like(r)
    d = np.where(r > 0, (big / np.maximum(r, 1e-30)) ** alpha, 1.0)
    return np.clip(d, 1.0, MAX_SCALE)


def equalize(graph: Graph, calib, mode: str = "data", alpha: float = ALPHA) -> tuple[Graph, dict[str, np.ndarray]]:
    """A copy of ``graph`` with every found group equalized; returns it and the scale per producer."""
    if not 0.0 < alpha <= 1.0:
        raise RecipeError(f"equalize_alpha={alpha}: use a value in (0, 1]")
    g = graph.copy()
    groups = find_groups(g, mode)
    if not groups:
        return g, {}
    if calib is None:
        raise CalibrationError("equalization needs calibration data (per-channel activation ranges)")
    ranges = channel_ranges(graph, {t.name for _, ts, _ in groups for t in ts}, calib)  # of the original graph:
    applied = {}  # a consumer's output ranges do not change when its input is equalized, so one pass suffices
    for producers, tensors, consumers in groups:
        d = scales(np.max([ranges[t.name] for t in tensors], axis=0), alpha)
        for a in producers:
            wa = a.params["weight"].astype(np.float64)
            a.params["weight"] = (wa * d.reshape((-1,) + (1,) * (wa.ndim - 1))).astype(np.float32)
            a.params["bias"] = (a.params["bias"].astype(np.float64) * d).astype(np.float32)
            applied[a.name] = d
        for b in consumers:
            wb = b.params["weight"].astype(np.float64)
            dw = b.op == "conv" and b.attrs["groups"] > 1
            b.params["weight"] = (wb / d.reshape((-1,) + (1,) * (wb.ndim - 1) if dw else (1, -1) + (1,) * (wb.ndim - 2))
                                  ).astype(np.float32)
    return g.validate(), applied


def equalize_step(graph: Graph, recipe: Recipe, calib) -> Graph:
    """Pre-calibration step: equalize when the recipe sets ``equalize`` (else the graph unchanged)."""
    mode = _mode(recipe)
    if mode is None or recipe.mode not in ("static", "dynamic"):
        return graph
    alpha = recipe.option("equalize_alpha", ALPHA)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise RecipeError(f"recipe {recipe.name!r}: equalize_alpha={alpha!r} must be a number in (0, 1]")
    return equalize(graph, calib, mode, float(alpha))[0]
