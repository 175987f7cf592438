"""KL (entropy) observer: TensorRT-style calibration by minimum KL divergence."""
from __future__ import annotations

import numpy as np

from ..errors import RecipeError
from .base import Observer, register_observer
from .histogram import StreamingHistogram


def _smooth(d: np.ndarray, eps: float) -> np.ndarray | None:
    """Give empty bins ``eps`` counts, taken evenly from the others (MXNet's
    ``_smooth_distribution``); ``None`` where that would empty a bin."""
    zeros = d == 0
    n_zero = int(zeros.sum())
    if n_zero == 0:
        return d
    n_nonzero = d.size - n_zero
    if n_nonzero == 0:
        return None
    out = d + np.where(zeros, eps, -eps * n_zero / n_nonzero)
    return out if np.all(out > 0) else None


def kl_threshold_bin(hist: np.ndarray, levels: int, stride: int = 1, eps: float = 1e-4) -> int:
    """TensorRT entropy calibration on a histogram of ``|x|`` starting at 0; returns the number
    of bins ``i`` to keep (the threshold is bin ``i``'s left edge, ``i * width``).

    For each candidate ``i`` from ``levels`` to ``len(hist)``: the reference ``P`` is
    ``hist[:i]`` with every count beyond folded into bin ``i-1`` (clipping keeps those values, at
    the threshold); the candidate ``Q`` merges ``hist[:i]`` into ``levels`` equal groups of bins
    and spreads each group's count evenly back over the group's bins where ``P`` is non-empty
    (what quantizing to ``levels`` steps leaves of the shape). Both are smoothed (empty bins get
    ``eps`` counts, as MXNet/TVM/ONNX Runtime implement the algorithm: without it every window
    that ends in an empty bin has infinite divergence, so a sparse tail of a few outliers would
    force the threshold onto an outlier), normalised, and the smallest ``KL(P || Q)`` wins (ties:
    the narrowest window).
    """
    n = len(hist)
    if n <= levels:
        return n
    hist = np.asarray(hist, np.float64)
    total = hist.sum()
    cum = np.cumsum(hist)
    best_i, best_kl = n, np.inf
    for i in range(levels, n + 1, stride):
        h = hist[:i]
        p = h.copy()
        p[-1] += total - cum[i - 1]  # outliers clipped onto the threshold
        nz = p > 0
        cid = (np.arange(i) * levels) // i  # group of each bin, (i,)
        sums = np.bincount(cid, weights=h, minlength=levels)
        nnz = np.bincount(cid, weights=nz, minlength=levels)
        q = np.where(nz, sums[cid] / np.maximum(nnz[cid], 1), 0.0)
        ps, qs = _smooth(p, eps), _smooth(q, eps)
        if ps is None or qs is None:
            continue
        ps, qs = ps / ps.sum(), qs / qs.sum()
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


@register_observer("kl")
class KLObserver(Observer):
    """Entropy calibration (TensorRT, "8-bit Inference with TensorRT", Migacz 2017).

    Why: the min/max range wastes levels on rare outliers, a hard percentile ignores the shape;
    choosing the threshold whose quantized distribution loses the least information (minimum
    KL divergence to the clipped reference) keeps the resolution where the mass is.

    One histogram of ``|x|`` (``bins`` bins from 0, kept at >= half resolution as the range
    grows) for every mode -- the search is over a symmetric window ``[-T, T]``. The window is
    quantized to ``2^(bits-1)`` levels (128 for int8) when the grid spans both signs (signed
    symmetric, or data with negative values), and to ``2^bits`` levels when all of them fall on
    ``[0, T]`` (unsigned symmetric, or asymmetric settings on non-negative data, e.g. after ReLU).
    The range is ``(-T, T)`` for signed symmetric settings, otherwise the data's ``[min, max]``
    clipped to ``[-T, T]``. ``stride`` > 1 tries every ``stride``-th threshold (faster).

    Exact zeros are left out of the histogram: zero is exactly representable, and the spike a
    ReLU leaves in the first bin would otherwise dominate the divergence and pull the threshold
    down (pytorch-quantization copies bin 1 into bin 0 for the same reason).
    """

    def __init__(self, bins: int = 2048, stride: int = 1, eps: float = 1e-4, **kw) -> None:
        super().__init__(**kw)
        if stride < 1:
            raise RecipeError(f"KL stride must be a positive integer, got {stride}")
        self.bins = bins
        self.stride = stride
        self.eps = eps
        self.hist: StreamingHistogram | None = None  # of |x|
        self.vmin: np.ndarray | None = None  # (C,) signed extremes
        self.vmax: np.ndarray | None = None
        self.zeros: np.ndarray | None = None  # (C,) count of exact zeros

    def _update(self, x: np.ndarray) -> None:
        v = self.channels_last(x)  # (N, C)
        if self.hist is None:
            self.hist = StreamingHistogram(v.shape[1], self.bins)
            self.vmin, self.vmax = v.min(axis=0), v.max(axis=0)
            self.zeros = np.zeros(v.shape[1], np.int64)
        else:
            self.vmin, self.vmax = np.minimum(self.vmin, v.min(axis=0)), np.maximum(self.vmax, v.max(axis=0))
        self.hist.update(np.abs(v))
        self.zeros += np.count_nonzero(v == 0, axis=0)

    def _levels(self, c: int) -> int:
        if self.symmetric:
            return 2 ** (self.bits - 1) if self.signed else 2**self.bits
        return 2**self.bits if self.vmin[c] >= 0 else 2 ** (self.bits - 1)

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        C = self.hist.channels
        t = np.zeros(C)
        w = self.hist.width()
        for c in range(C):
            amax = self.hist.vmax[c]
            if amax <= 0:
                continue
            hist = self.hist.counts[c, : np.flatnonzero(self.hist.counts[c])[-1] + 1].copy()  # from 0
            hist[0] -= self.zeros[c]  # exact zeros are exact after quantization: no information
            if hist.sum() <= 0:
                t[c] = amax
                continue
            i = kl_threshold_bin(hist, self._levels(c), self.stride, self.eps)
            t[c] = min(i * w[c], amax)
        if self.symmetric and self.signed:
            lo, hi = -t, t
        else:
            lo, hi = np.maximum(self.vmin.astype(np.float64), -t), np.minimum(self.vmax.astype(np.float64), t)
        if self.axis is None:
            return lo[0], hi[0]
        return lo, hi
