"""Which recipe ``quantize`` uses when none is named: chosen from the captured graph.

Why: ``w8a8-pc`` is the right default for conv nets (every CNN figure in bench/RESULTS.md), but on
a transformer per-tensor int8 activations cannot hold the outlier channels of the residual stream
(all-MiniLM-L6-v2: cosine 0.850 vs fp32). A graph with LayerNorm or attention (a matmul of two
activations, a softmax) gets ``TRANSFORMER_DEFAULT`` instead, whose 16-bit activations keep the
integer program at fp32 fidelity. Named recipes keep their meaning; the choice and its reason are
recorded in ``program.meta["recipe_choice"]`` and logged (logger ``edgequant``).
"""
from __future__ import annotations

import logging

from .ir import Graph

DEFAULT = "w8a8-pc"
TRANSFORMER_DEFAULT = "w8a16"
TRANSFORMER_OPS = frozenset({"layernorm", "matmul", "softmax"})

log = logging.getLogger("edgequant")


def recipe_for(graph: Graph) -> tuple[str, str]:
    """(recipe name, why) that ``quantize`` picks for the captured (prepared) ``graph``."""
    found = sorted({n.op for n in graph.nodes if n.op in TRANSFORMER_OPS})
    if found:
        return TRANSFORMER_DEFAULT, (f"the graph has {', '.join(found)} (a transformer): {TRANSFORMER_DEFAULT} carries the "
                                     f"residual stream and attention in 16 bits; name a recipe (e.g. {DEFAULT!r}) to override")
    return DEFAULT, "no LayerNorm or attention in the graph: the int8 default"


def choose(graph: Graph) -> dict:
    """``{"requested": None, "recipe": name, "why": ...}`` for the captured (prepared) ``graph``."""
    name, why = recipe_for(graph)
    log.info("edgequant.quantize: no recipe named; using %r (%s)", name, why)
    return {"requested": None, "recipe": name, "why": why}
