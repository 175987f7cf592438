"""Which activations get 16 bits (recipe option ``act16``), and their qparams.

Why: in a BERT-style encoder the residual stream (LayerNorm inputs), the LayerNorm outputs and
the FFN tensors carry outlier channels that per-tensor int8 cannot hold; giving exactly those
16 bits over the same calibrated range lifted all-MiniLM-L6-v2 from cosine 0.856 to 0.9986 in a
fake-quant ablation (bench/RESULTS.md, issue 16). ``act16="residual"`` selects every output of
an op with an int16 kernel (``PRODUCERS``) whose consumers all take int16 inputs (``CONSUMERS``,
looking through reshape/transpose), so the attention matmuls and softmax stay int8.
"""
from __future__ import annotations

import numpy as np

from .errors import RecipeError
from .ir import Graph
from .qmath import QParams, compute_qparams
from .recipes import Recipe
from .wide import INT16_INPUT_OPS, WIDE_BITS

PRODUCERS = frozenset({"input", "linear", "conv", "add", "layernorm", "unary", "reduce", "mean"})
PASS = frozenset({"reshape", "transpose", "pad"})
CONSUMERS = INT16_INPUT_OPS - PASS
MODES = ("residual",)


def _consumers(graph: Graph) -> dict[str, list]:
    out: dict[str, list] = {n.name: [] for n in graph.nodes}
    for n in graph.nodes:
        for i in n.inputs:
            out[i].append(n)
    return out


def wide_nodes(graph: Graph, recipe: Recipe) -> set[str]:
    """Names of the nodes whose output the recipe carries in 16 bits (empty without ``act16``)."""
    mode = recipe.option("act16")
    if mode is None or recipe.mode != "static":
        return set()
    if mode not in MODES:
        raise RecipeError(f"recipe {recipe.name!r}: act16={mode!r}; use one of {MODES}")
    cons = _consumers(graph)

    def ok(name: str) -> bool:
        users = cons[name]
        if name == graph.output:
            return all(u.op in CONSUMERS or (u.op in PASS and ok(u.name)) for u in users)
        return bool(users) and all(u.op in CONSUMERS or (u.op in PASS and ok(u.name)) for u in users)

    return {n.name for n in graph.nodes if n.op in PRODUCERS and ok(n.name)}


def widen_qparams(qp: QParams) -> QParams:
    """Symmetric int16 qparams (zero point 0, TFLite 16x8) covering ``qp``'s real range."""
    lo = float(qp.scale) * (qp.qmin - int(qp.zero_point))
    hi = float(qp.scale) * (qp.qmax - int(qp.zero_point))
    return compute_qparams(np.float64(lo), np.float64(hi), WIDE_BITS, signed=True, symmetric=True, narrow=False)


def widen_activations(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None) -> None:
    """Give the ``wide_nodes`` 16-bit qparams over their calibrated ranges (in place)."""
    if not act_qp:
        return
    for name in wide_nodes(graph, recipe):
        if name in act_qp and act_qp[name].bits <= 8:
            act_qp[name] = widen_qparams(act_qp[name])
