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
from .lowbit import groups
from .observers import make_observer
from .qmath import quantize
from .recipes import Recipe

WEIGHT_METHODS: dict[str, Callable[[Node, Recipe, int], tuple[np.ndarray, np.ndarray]]] = {}


def register_weight_method(name: str) -> Callable:
    def deco(fn):
        WEIGHT_METHODS[name] = fn
        return fn
    return deco


def quantize_with_observer(w: np.ndarray, bits: int, observer: str, per_channel: bool,
                           **observer_kw) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric narrow-range weights with the clip ``observer`` picks: (int8 q, scale per channel)."""
    ob = make_observer(observer, bits=bits, signed=True, symmetric=True, narrow=True,
                       axis=0 if per_channel else None, **observer_kw)
    ob.update(w)
    qp = ob.qparams()
    q = quantize(w, qp)
    scale = np.broadcast_to(np.asarray(qp.scale, np.float32), (w.shape[0],)).copy()
    return q.astype(np.int8), scale


@register_weight_method("observer")
def observer_weights(node: Node, recipe: Recipe,
                     bits: int) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict]:
    """The observer's clip per channel, or per group of input columns with option ``weight_group``
    (``lowbit/groups.py``: the instruction gets the group multipliers)."""
    spec = recipe.weights
    group = groups.group_option(recipe, bits)
    if group is None:
        return quantize_with_observer(node.params["weight"], bits, spec.observer, spec.per_channel)
    q, scale, mult = groups.quantize_groups(node.params["weight"], bits, spec.observer, group)
    return q, scale, {groups.ARRAY: mult, groups.ATTR: group}


# Corrections applied after any method: ``fn(node, recipe, q, scale) -> scale`` (e.g. the
# norm-restoring bias correction of Banner et al.); each does nothing unless the recipe asks.
WEIGHT_CORRECTIONS: list[Callable[[Node, Recipe, np.ndarray, np.ndarray], np.ndarray]] = []


def quantize_weight_ex(node: Node, recipe: Recipe, bits: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """``quantize_weight`` plus the instruction attrs the method records.

    A method returns ``(q, scale)`` or ``(q, scale, attrs)``; attrs such as ``channel_bits`` and
    ``packed_weight_bytes`` (per-channel bit allocation) go into the lowered instruction.
    """
    method = recipe.option("weight_method", "observer")
    if method not in WEIGHT_METHODS:
        raise RecipeError(f"recipe {recipe.name!r}: unknown weight_method {method!r}; known: {sorted(WEIGHT_METHODS)}")
    res = WEIGHT_METHODS[method](node, recipe, bits)
    q, scale = res[0], res[1]
    extra = dict(res[2]) if len(res) > 2 else {}
    if groups.group_option(recipe, bits) is not None and groups.ARRAY not in extra:
        raise RecipeError(f"recipe {recipe.name!r}: weight_group needs weight_method 'observer' (or GPTQ on it, "
                          f"reconstruct='gptq'); {method!r} has no group scales ({node.describe()})")
    for fix in WEIGHT_CORRECTIONS:
        scale = fix(node, recipe, q, scale)
    return q, np.asarray(scale, np.float32), extra


def quantize_weight(node: Node, recipe: Recipe, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(int weights with the float weight's shape, float32 scale per output channel)."""
    q, scale, _ = quantize_weight_ex(node, recipe, bits)
    return q, scale


# low-bit methods ("aciq", "bit_alloc", "xnor", "ternary") and their corrections register here
from .lowbit import weights as _lowbit_weights  # noqa: E402,F401
