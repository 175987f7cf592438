"""Activation clips chosen by the measured error of the next layer's output (recipe option ``act_clip="search"``).

One observer rarely suits every tensor of a real net: on EfficientNet-Lite1 at W8A8 min/max beat
percentile, MSE and KL overall (92.5 vs 90.5 / 91.5 / 87.0 % agreement), yet each of those is the
better clip somewhere. The papers that search clips (ACIQ's and LAPQ's search variants, AIMET's
per-tensor encoding analysis) judge a clip by what it does downstream, not by a distribution
assumption; so does this step. For every per-tensor activation grid read by a conv/linear (through
grid-preserving ops such as ``pad``), the candidates are the recipe's own calibrated grid and the
grids the min/max, percentile, MSE, KL and ACIQ observers propose at that tensor's width; each is
scored by ``sum ||f(W q(x)) - f(W x)||^2`` over the calibration samples, ``f`` the consumer's fused
activation (ReLU6 included, so its bound is respected) and ``W`` the float weights, and the lowest
wins. Min/max is always a candidate, so the chosen clip never has a larger measured error than
min/max on the calibration data (tested). Cost: one observation pass and one scoring pass, each
about (1 + candidates) forward passes of the float model over ``clip_search_samples`` samples.
"""
from __future__ import annotations

import numpy as np
import torch

from ..calibrate import OBSERVED_OPS, iter_batches
from ..errors import CalibrationError
from ..graph_exec import GraphModule, run_node
from ..ir import Graph, Node
from ..observers import make_observer
from ..qmath import QParams
from ..recipes import Recipe

CANDIDATES = ("minmax", "percentile", "mse", "kl", "aciq")
GEMMS = ("conv", "linear")
SAMPLES = 32  # default ``clip_search_samples``: enough to rank a handful of clips


def consumer_chains(graph: Graph) -> dict[str, list[list[Node]]]:
    """Tensor -> the node chains from it to each conv/linear reading its grid: single-input nodes
    that keep the grid (not in ``OBSERVED_OPS``: pad, reshape, pooling) followed by the gemm."""
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for a in set(n.inputs):
            readers.setdefault(a, []).append(n)

    def walk(name: str, prefix: list[Node], out: list[list[Node]]) -> None:
        for r in readers.get(name, []):
            if r.op in GEMMS and r.inputs[0] == name:
                out.append(prefix + [r])
            elif r.op not in OBSERVED_OPS and len(r.inputs) == 1 and len(prefix) < 4:
                walk(r.name, prefix + [r], out)

    chains = {}
    for n in graph.nodes:
        found: list[list[Node]] = []
        walk(n.name, [], found)
        if found:
            chains[n.name] = found
    return chains


def _iter_samples(calib, limit: int):
    seen = 0
    for x in iter_batches(calib):
        if not x.numel():
            continue
        x = x[: limit - seen]
        seen += len(x)
        yield x.float()
        if seen >= limit:
            return


def _same(a: QParams, b: QParams) -> bool:
    return bool(np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point))


def search_clips(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams], calib,
                 samples: int = SAMPLES) -> dict[str, dict]:
    """Replace each searched tensor's grid in ``act_qp`` (in place) by the candidate with the lowest
    consumer output error; returns per tensor the chosen observer and every candidate's error."""
    chains = {t: c for t, c in consumer_chains(graph).items() if t in act_qp and not act_qp[t].per_channel}
    if not chains:
        return {}
    if calib is None:
        raise CalibrationError(f"recipe {recipe.name!r}: act_clip='search' needs the calibration data")
    spec = recipe.activations
    observers = {t: {c: make_observer(c, bits=act_qp[t].bits, signed=act_qp[t].signed, symmetric=spec.symmetric,
                                      narrow=act_qp[t].narrow) for c in CANDIDATES} for t in chains}
    gm = GraphModule(graph)

    def observe(node: Node, y: torch.Tensor) -> torch.Tensor:
        if node.name in observers:
            v = y.detach().numpy()
            for ob in observers[node.name].values():
                ob.update(v)
        return y

    with torch.no_grad():
        for x in _iter_samples(calib, samples):
            gm(x, observe)
    cands: dict[str, dict[str, QParams]] = {}
    for t, obs in observers.items():
        found = {"calibrated": act_qp[t]}
        for c, ob in obs.items():
            qp = ob.qparams()
            if not any(_same(qp, v) for v in found.values()):
                found[c] = qp
            elif c == "minmax":  # keep its name visible in the report when it equals the calibrated grid
                found.setdefault("minmax", qp)
        cands[t] = found
    errors = {t: {c: 0.0 for c in cs} for t, cs in cands.items()}
    params = {n.name: {k: torch.as_tensor(v, dtype=torch.float32) for k, v in n.params.items()} for n in graph.nodes}

    def chain(nodes: list[Node], x: torch.Tensor) -> torch.Tensor:
        for n in nodes:
            x = run_node(n, [x], params[n.name])
        return x

    def score(node: Node, y: torch.Tensor) -> torch.Tensor:
        if node.name in cands:
            ref = [chain(c, y) for c in chains[node.name]]
            scored: list[tuple[QParams, float]] = []
            for c, qp in cands[node.name].items():
                e = next((v for p, v in scored if _same(p, qp)), None)  # min/max often is the calibrated grid
                if e is None:
                    # torch's fused kernel (ties to even: immaterial to a score, ~5x faster than ours)
                    yq = torch.fake_quantize_per_tensor_affine(y, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax)
                    e = sum(float(torch.linalg.vector_norm(chain(ch, yq) - r, dtype=torch.float64)) ** 2
                            for ch, r in zip(chains[node.name], ref))
                    scored.append((qp, e))
                errors[node.name][c] += e
        return y

    with torch.no_grad():
        for x in _iter_samples(calib, samples):
            gm(x, score)
    report = {}
    for t, errs in errors.items():
        best = min(errs, key=lambda c: (errs[c], c != "calibrated"))  # ties keep the recipe's grid
        act_qp[t] = cands[t][best]
        report[t] = {"chosen": best, "errors": errs}
    return report


def clip_search_step(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None, calib) -> dict[str, dict]:
    """Run ``search_clips`` when the recipe sets ``act_clip="search"`` (static recipes only)."""
    mode = recipe.option("act_clip")
    if mode in (None, False, "observer"):
        return {}
    if mode != "search":
        from ..errors import RecipeError

        raise RecipeError(f"recipe {recipe.name!r}: act_clip={mode!r}; use 'search' (or leave it unset)")
    if recipe.mode != "static" or not act_qp:
        return {}
    return search_clips(graph, recipe, act_qp, calib, int(recipe.option("clip_search_samples", SAMPLES)))
