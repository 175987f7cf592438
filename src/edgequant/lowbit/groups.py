"""Group-wise weight scales that stay integer-only: a float scale per output channel times an
unsigned integer multiplier per group of ``group`` input columns (recipe option ``weight_group``).

Why: one 4-bit scale per output channel over a 384- or 1536-wide row is too coarse for a BERT-style
encoder (all-MiniLM-L6-v2 with GPTQ stopped at 0.98 mean cosine, bench/RESULTS.md, issue 16);
a scale per group of 64-128 columns is what 4-bit LLM quantizers use. Storing a float scale per
group would need a float (or per-group requantized) accumulation; here the group scale is
``s[o] * m[o, g]`` with ``m`` an integer in ``[1, 2^MULT_BITS - 1]``, so the layer is an ordinary
integer GEMM with the *effective* integer weight ``q[o, i] * m[o, g(i)]`` (|.| <= 7 * 255 at 4
bits: the int32 accumulator of an 8-bit input still holds K <= 4,700 columns) and one
requantization per output channel with ``s[o]``. Stored: the 4-bit codes packed, plus one byte
per group and channel (``w_group_mult``, counted in ``size_bytes``).

Layout: the weight's flattened input dims (``weight.reshape(O, -1)``, C order: a linear's input
columns, a conv's ``(C/groups, kh, kw)``) are cut into consecutive groups of ``group`` columns,
the last one possibly shorter. Only 2..7-bit weights are grouped (8-bit rows need no groups;
1-bit rows are signs).
"""
from __future__ import annotations

import numpy as np

from ..errors import RecipeError
from ..observers import make_observer
from ..qmath import quantize

MULT_BITS = 8  # bits of the per-group multiplier (unsigned, 1..255)
MULT_MAX = (1 << MULT_BITS) - 1
ARRAY = "w_group_mult"  # instruction array (O, G) uint8
ATTR = "weight_group"   # instruction attr: columns per group


def group_option(recipe, bits: int) -> int | None:
    """The recipe's ``weight_group`` for a layer of ``bits``-bit weights (None: per channel)."""
    g = recipe.option(ATTR)
    if g in (None, 0, False) or not 2 <= bits < 8:
        return None
    if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1:
        raise RecipeError(f"recipe {recipe.name!r}: weight_group={g!r} must be a positive number of input columns "
                          "per scale group, e.g. 128")
    return int(g)


def n_groups(k: int, group: int) -> int:
    return -(-int(k) // int(group))


def expand(mult: np.ndarray, k: int, group: int) -> np.ndarray:
    """Per-group multipliers (O, G) -> per-column (O, K)."""
    return np.repeat(np.asarray(mult), group, axis=1)[:, :k]


def effective_weight(q: np.ndarray, mult: np.ndarray, group: int) -> np.ndarray:
    """The integer weight the GEMM multiplies, ``q * m`` per group, int32 with ``q``'s shape."""
    q2 = np.asarray(q).reshape(q.shape[0], -1).astype(np.int32)
    return (q2 * expand(mult, q2.shape[1], group).astype(np.int32)).reshape(q.shape)


def column_scale(scale: np.ndarray, mult: np.ndarray, k: int, group: int) -> np.ndarray:
    """Real step of every weight, (O, K) float64: ``scale[o] * m[o, g(i)]``."""
    return np.asarray(scale, np.float64)[:, None] * expand(mult, k, group).astype(np.float64)


def quantize_groups(w: np.ndarray, bits: int, observer: str, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 codes with ``w``'s shape, float32 channel scale (O,), uint8 multipliers (O, G)).

    Each group's clip comes from ``observer`` over its own columns (symmetric, narrow); the
    channel scale is the largest group step / MULT_MAX, each group's multiplier its step over that,
    rounded (>= 1), and the codes are ``w`` rounded on the resulting step ``scale * m``.
    """
    o = w.shape[0]
    w2 = np.asarray(w, np.float64).reshape(o, -1)
    k = w2.shape[1]
    g = n_groups(k, group)
    padded = np.zeros((o, g * group), np.float64)  # a short last group is padded with zeros
    padded[:, :k] = w2
    ob = make_observer(observer, bits=bits, signed=True, symmetric=True, narrow=True, axis=0)
    ob.update(padded.reshape(o * g, group).astype(np.float32))
    step = np.asarray(ob.qparams().scale, np.float64).reshape(o, g)
    top = step.max(axis=1)
    scale = np.where(top > 0, top / MULT_MAX, 1.0)
    mult = np.clip(np.rint(step / scale[:, None]), 1, MULT_MAX)
    qmax = (1 << (bits - 1)) - 1
    q = np.clip(np.rint(w2 / column_scale(scale, mult, k, group)), -qmax, qmax)
    return q.reshape(w.shape).astype(np.int8), scale.astype(np.float32), mult.astype(np.uint8)

