"""Binary and ternary weights.

* ``xnor`` (XNOR-Net, Rastegari et al. 2016, arXiv 1603.05279): ``W_c ~= alpha_c * sign(W_c)`` with
  ``alpha_c = mean|W_c|``, the L2-optimal scale for a sign pattern. ``sign(0) = +1``. Integer
  weights are +-1 (1-bit packed: bit 1 = +1).
* ``ternary`` (TWN, Li & Liu 2016, arXiv 1605.04711): threshold ``delta_c = 0.7 * mean|W_c|``,
  ``q = sign(W) * [|W| > delta]``, ``alpha_c = mean |W| over the kept weights``. Integer weights
  are -1/0/+1, stored as 2-bit values (the narrow 2-bit range is exactly {-1, 0, 1}).

Both apply at their own width (1 resp. 2 bits); a layer at another width (the first and last
layers kept at 8 bits, or a ``LayerOverride``) uses ``fallback_weight_method`` (default
"observer"), so mixed precision by override works with them.
"""
from __future__ import annotations

import numpy as np

from ..ir import Node
from ..recipes import Recipe
from ..weight_quant import WEIGHT_METHODS, register_weight_method

TWN_DELTA = 0.7


def binarize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(+-1 int8, alpha_c = mean|W_c| float32) for weights with output channels in dim 0."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    alpha = np.abs(flat).mean(axis=1)
    q = np.where(w >= 0, 1, -1).astype(np.int8)
    return q, np.where(alpha > 0, alpha, 1.0).astype(np.float32)


def ternarize_rows(w: np.ndarray, delta_ratio: float = TWN_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """(-1/0/+1 int8, alpha_c float32): TWN threshold ``delta_ratio * mean|W_c|``."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    delta = delta_ratio * np.abs(flat).mean(axis=1, keepdims=True)
    keep = np.abs(flat) > delta
    n = keep.sum(axis=1)
    alpha = np.where(n > 0, (np.abs(flat) * keep).sum(axis=1) / np.maximum(n, 1), 1.0)
    q = (np.sign(flat) * keep).astype(np.int8).reshape(w.shape)
    return q, alpha.astype(np.float32)


def _fallback(node: Node, recipe: Recipe, bits: int):
    return WEIGHT_METHODS[recipe.option("fallback_weight_method", "observer")](node, recipe, bits)


@register_weight_method("xnor")
def xnor_weights(node: Node, recipe: Recipe, bits: int):
    if bits != 1:
        return _fallback(node, recipe, bits)
    return binarize_rows(node.params["weight"])


@register_weight_method("ternary")
def ternary_weights(node: Node, recipe: Recipe, bits: int):
    if bits != 2:
        return _fallback(node, recipe, bits)
    return ternarize_rows(node.params["weight"], float(recipe.option("ternary_delta", TWN_DELTA)))
