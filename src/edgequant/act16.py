"""Which activations get 16 bits (recipe option ``act16``), and their qparams.

Why: in a BERT-style encoder the residual stream (LayerNorm inputs), the LayerNorm outputs and
the FFN tensors carry outlier channels that per-tensor int8 cannot hold; giving exactly those
16 bits over the same calibrated range lifted all-MiniLM-L6-v2 from cosine 0.856 to 0.9986 in a
fake-quant ablation (bench/RESULTS.md, issue 16). ``act16="residual"`` selects every output of
an op with an int16 kernel (``PRODUCERS``) whose consumers all take int16 inputs (``CONSUMERS``,
looking through reshape/transpose), so the attention matmuls and softmax stay int8.
``act16="all"`` also takes Q/K/V, the attention scores, the softmax probabilities (grid 2^-16),
the context and the embedding gathers (int16 tables) to 16 bits: every activation with an int16
kernel on both sides.
"""
from __future__ import annotations

import numpy as np

from .errors import RecipeError
from .ir import Graph
from .qmath import QParams, compute_qparams
from .recipes import Recipe
from .wide import WIDE_BITS

PASS = frozenset({"reshape", "transpose", "pad"})
# mode -> (ops whose output may be 16-bit, ops that may read a 16-bit input); every op named here
# has an int16 kernel (wide.INT16_INPUT_OPS)
_RESIDUAL = frozenset({"input", "linear", "conv", "add", "layernorm", "unary", "reduce", "mean"})
_ATTENTION = frozenset({"matmul", "softmax"})
SELECTION = {
    "residual": (_RESIDUAL, _RESIDUAL - {"input"}),
    # + Q/K/V, attention scores, softmax probabilities and context: int16 x int16 matmuls (int64
    # accumulator, TFLite 16x16 BATCH_MATMUL) and the int16 softmax (TFLite 16-bit SOFTMAX grid)
    # the embedding gathers too: their int16 tables are stored on the output grid (act16 "all" only)
    "all": (_RESIDUAL | _ATTENTION | {"embedding"}, (_RESIDUAL - {"input"}) | _ATTENTION),
}
MODES = tuple(SELECTION)  # every consumer named has an int16 kernel (tests/test_act16.py)


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
    producers, consumers = SELECTION[mode]
    cons = _consumers(graph)

    def reads_wide(u, name: str) -> bool:
        # the second input of a masked softmax / masked mean is the padding mask, not an activation
        return u.op in consumers and (u.op not in ("softmax", "reduce") or u.inputs[0] == name)

    def ok(name: str) -> bool:
        users = cons[name]
        if name == graph.output:
            return all(reads_wide(u, name) or (u.op in PASS and ok(u.name)) for u in users)
        return bool(users) and all(reads_wide(u, name) or (u.op in PASS and ok(u.name)) for u in users)

    return {n.name for n in graph.nodes if n.op in producers and ok(n.name)}


def widen_qparams(qp: QParams) -> QParams:
    """Symmetric int16 qparams (zero point 0, TFLite 16x8) covering ``qp``'s real range."""
    lo = float(qp.scale) * (qp.qmin - int(qp.zero_point))
    hi = float(qp.scale) * (qp.qmax - int(qp.zero_point))
    return compute_qparams(np.float64(lo), np.float64(hi), WIDE_BITS, signed=True, symmetric=True, narrow=False)


def widen_activations(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None) -> None:
    """Give the ``wide_nodes`` 16-bit qparams over their calibrated ranges (in place)."""
    if not act_qp:
        return
    from .lower.hf import embedding_qparams  # grids fixed by construction (not observed)
    from .lower.transformer import softmax_qparams

    for name in wide_nodes(graph, recipe):
        node = graph.node(name)
        if node.op == "softmax":
            act_qp[name] = softmax_qparams(WIDE_BITS)
        elif node.op == "embedding":  # the whole table's range, symmetric int16
            act_qp[name] = embedding_qparams(node.params["weight"].astype(np.float64), WIDE_BITS, True)
        elif name in act_qp and act_qp[name].bits <= 8:
            act_qp[name] = widen_qparams(act_qp[name])
