"""Per-channel bit allocation (Banner et al., arXiv 1810.05723, section 4).

With ``M_i`` bits and clip ``alpha_i`` the rounding noise of channel ``i`` is ``~ alpha_i^2 / 4^M_i``;
minimising the sum over channels under a budget on the levels ``sum 2^M_i = B`` gives
``2^M_i = alpha_i^(2/3) / sum_j alpha_j^(2/3) * B``. Here the budget is the *storage*: the average
width is the recipe's ``bits`` exactly (``sum M_i = round(C * bits)``), so a 4-bit recipe stores
exactly 4 bits per weight on average. Widths keep the paper's proportionality
``2^M_i ~ alpha_i^(2/3)``: ``M_i = lam + (2/3) log2 alpha_i`` clamped to ``[lo, hi]``, ``lam``
chosen so that the real widths sum to the budget, then rounded by largest remainder so that the
integer widths sum to it exactly.

Channels are quantized symmetric, narrow range, at their own width inside the int8 container; a
1-bit channel is binary (``mean|w| * sign w``). The instruction records ``channel_bits`` and
``packed_weight_bytes`` (each channel's row packed at its width, plus one byte per channel for
the width itself: ``packing.pack_rows``, the artifact's layout), which ``size_bytes`` counts;
``weight_bits`` is the widest channel.
"""
from __future__ import annotations

import numpy as np

from ..errors import RecipeError
from ..ir import Node
from ..observers import make_observer
from ..packing import packed_rows_nbytes  # the artifact's per-channel layout (packing.pack_rows)
from ..qmath import quantize
from ..recipes import Recipe
from ..weight_quant import register_weight_method
from .binary import binarize_rows
from .clip import weight_observer_kw


def allocate_bits(alphas: np.ndarray, mean_bits: float, lo: int = 1, hi: int = 8) -> np.ndarray:
    """Integer width per channel: ``2^M_i ~ alpha_i^(2/3)``, ``sum M_i = round(C * mean_bits)``."""
    a = np.asarray(alphas, np.float64).reshape(-1)
    C = a.size
    total = int(round(C * float(mean_bits)))
    if not 1 <= lo <= hi <= 8:
        raise RecipeError(f"bit allocation bounds must satisfy 1 <= lo <= hi <= 8, got lo={lo}, hi={hi}")
    if not lo * C <= total <= hi * C:
        raise RecipeError(f"cannot allocate an average of {mean_bits} bits with per-channel widths in [{lo}, {hi}]")
    if C == 0:
        return np.zeros(0, np.int64)
    with np.errstate(divide="ignore"):
        g = np.where(a > 0, (2.0 / 3.0) * np.log2(np.where(a > 0, a, 1.0)), -np.inf)  # dead channel -> lo
    finite = g[np.isfinite(g)]
    if finite.size == 0:
        g = np.zeros(C)
        finite = g
    # real widths: the shift lam with sum clip(g + lam, lo, hi) == total (monotone in lam)
    lam_lo, lam_hi = lo - finite.max() - 1.0, hi - finite.min() + 1.0
    for _ in range(200):
        lam = 0.5 * (lam_lo + lam_hi)
        if np.clip(g + lam, lo, hi).sum() < total:
            lam_lo = lam
        else:
            lam_hi = lam
    t = np.clip(g + 0.5 * (lam_lo + lam_hi), lo, hi)
    m = np.floor(t + 1e-9).astype(np.int64)
    frac = t - m
    rem = total - int(m.sum())
    # largest remainder first; ties -> larger alpha (compared as alpha: log2 can merge close ones), then index
    # (remainders equal up to bisection noise count as ties, so a larger alpha never gets fewer bits)
    order = np.lexsort((np.arange(C), -a, -np.round(frac, 9)))
    while rem != 0:
        step = 1 if rem > 0 else -1
        cands = [i for i in (order if step > 0 else order[::-1]) if lo <= m[i] + step <= hi]
        take = cands[: abs(rem)]
        if not take:  # pragma: no cover - excluded by the feasibility check above
            raise RecipeError(f"bit allocation could not meet the budget of {total} bits")
        m[take] += step
        rem -= step * len(take)
    return m


def _clip_alphas(w: np.ndarray, bits: int, observer: str, **kw) -> np.ndarray:
    ob = make_observer(observer, bits=max(bits, 2), signed=True, symmetric=True, narrow=True, axis=0, **kw)
    ob.update(w)
    lo, hi = ob.range()
    return np.maximum(-np.asarray(lo, np.float64), np.asarray(hi, np.float64))


def quantize_rows(w: np.ndarray, widths: np.ndarray, observer: str, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Each output channel at its own width: (int8 q, float32 scale per channel)."""
    C = w.shape[0]
    q = np.zeros(w.shape, np.int8)
    scale = np.ones(C, np.float32)
    for bits in np.unique(widths):
        rows = np.flatnonzero(widths == bits)
        if bits == 1:
            q[rows], scale[rows] = binarize_rows(w[rows])
            continue
        ob = make_observer(observer, bits=int(bits), signed=True, symmetric=True, narrow=True, axis=0, **kw)
        ob.update(w[rows])
        qp = ob.qparams()
        q[rows] = quantize(w[rows], qp).astype(np.int8)
        scale[rows] = np.asarray(qp.scale, np.float32)
    return q, scale


@register_weight_method("bit_alloc")
def bit_alloc_weights(node: Node, recipe: Recipe, bits: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-channel widths averaging ``bits``; clips from the recipe's weight observer (min/max or
    ACIQ) at each channel's width. Options ``bit_alloc_min`` (default 1) / ``bit_alloc_max`` (8)."""
    w = node.params["weight"]
    observer = recipe.weights.observer
    lo, hi = int(recipe.option("bit_alloc_min", 1)), int(recipe.option("bit_alloc_max", 8))
    lo, hi = min(lo, bits), max(hi, bits)
    kw = weight_observer_kw(recipe, observer)
    widths = allocate_bits(_clip_alphas(w, bits, observer, **kw), bits, lo, hi)
    q, scale = quantize_rows(w, widths, observer, **kw)
    extra = {"channel_bits": [int(b) for b in widths], "weight_bits": int(widths.max()),
             "packed_weight_bytes": packed_rows_nbytes(int(w[0].size), widths)}
    return q, scale, extra
