"""Weight quantization: float weights -> (integer weights, per-output-channel scale).

A table of methods keyed by the recipe option ``weight_method`` (default "observer": the recipe's
weight observer picks the clip, symmetric narrow range as in the TFLite spec). Low-bit methods
(ACIQ, bit allocation, XNOR, ...) register here too.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import RecipeError
from .ir import Node
from .observers import make_observer
from .qmath import quantize
from .recipes import Recipe

WEIGHT_METHODS: dict[str, Callable[[Node, Recipe, int], tuple[np.ndarray, np.ndarray]]] = {}


def register_weight_method(name: str) -> Callable:
    def deco(fn):
        WEIGHT_METHODS[name] = fn
        return fn
    return deco


@register_weight_method("observer")
def observer_weights(node: Node, recipe: Recipe, bits: int) -> tuple[np.ndarray, np.ndarray]:
    spec = recipe.weights
    w = node.params["weight"]
    ob = make_observer(spec.observer, bits=bits, signed=True, symmetric=True, narrow=True,
                       axis=0 if spec.per_channel else None)
    ob.update(w)
    qp = ob.qparams()
    q = quantize(w, qp)
    scale = np.broadcast_to(np.asarray(qp.scale, np.float32), (w.shape[0],)).copy()
    return q.astype(np.int8), scale


def quantize_weight(node: Node, recipe: Recipe, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(int weights with the float weight's shape, float32 scale per output channel)."""
    method = recipe.option("weight_method", "observer")
    if method not in WEIGHT_METHODS:
        raise RecipeError(f"recipe {recipe.name!r}: unknown weight_method {method!r}; known: {sorted(WEIGHT_METHODS)}")
    return WEIGHT_METHODS[method](node, recipe, bits)
