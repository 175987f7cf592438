"""MSE observer: grid search of the clip range that minimises the quantization MSE."""
from __future__ import annotations

import numpy as np

from ..errors import RecipeError
from ..qmath import compute_qparams
from .base import Observer, register_observer
from .histogram import StreamingHistogram


def _periodic_sq_integral(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """An antiderivative of ``(t - s*round(t/s))^2``: each period contributes ``s^3/12``."""
    k = np.rint(x / s)
    r = x - k * s  # in [-s/2, s/2]
    return k * s**3 / 12.0 + (r**3 + s**3 / 8.0) / 3.0


def histogram_sq_error(
    counts: np.ndarray, edges: np.ndarray, scale: np.ndarray, lo_q: np.ndarray, hi_q: np.ndarray
) -> np.ndarray:
    """Total squared quantization error of histogram data for K candidate grids, (K,).

    Samples are taken as uniform inside each bin and the error is integrated exactly: rounding
    to the nearest multiple of ``scale`` inside ``[lo_q, hi_q]`` (the grid's end points, multiples
    of ``scale`` because the zero point is an integer), clipping outside it.
    """
    a, b = edges[None, :-1], edges[None, 1:]  # (1, B)
    s, L, H = scale[:, None], lo_q[:, None], hi_q[:, None]  # (K, 1)
    inner = _periodic_sq_integral(np.clip(b, L, H), s) - _periodic_sq_integral(np.clip(a, L, H), s)
    over = ((np.maximum(b, H) - H) ** 3 - (np.maximum(a, H) - H) ** 3) / 3.0
    under = ((L - np.minimum(a, L)) ** 3 - (L - np.minimum(b, L)) ** 3) / 3.0
    density = counts[None, :] / (b - a)
    return np.sum(density * (inner + over + under), axis=1)


def data_sq_error(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """Total squared error of quantize->dequantize of samples ``x`` (N,) for K qparams, (K,)."""
    s, z = scale[:, None], zp[:, None]
    q = np.clip(np.rint(x[None, :] / s) + z, qmin, qmax)
    return np.sum((x[None, :] - (q - z) * s) ** 2, axis=1)


@register_observer("mse")
class MSEObserver(Observer):
    """Clip range ``f * [min, max]`` with ``f`` chosen from a grid to minimise the MSE of
    quantizing the data at ``self.bits`` with this observer's signed/symmetric/narrow settings
    (the qparams are made by ``compute_qparams``, so the zero-point nudge is included).

    Search: ``candidates`` fractions ``k/K`` (k = 1..K; ``f = 1`` is min/max), then ``refine``
    more between the best one's neighbours, so clips far below the outliers are still found.
    For symmetric settings ``[min, max] * f`` gives ``max|x| * f``.

    The error is evaluated on a fixed-size histogram (exactly integrated per bin, samples uniform
    inside a bin), or on the data itself when per channel (weights) and everything arrived in one
    ``update`` of at most ``exact_max`` samples per channel: that batch is kept until a second
    one arrives, when only the histograms remain, so memory does not grow with the batch count.
    """

    def __init__(
        self, candidates: int = 100, refine: int = 20, bins: int = 2048, exact_max: int = 1 << 16, **kw
    ) -> None:
        super().__init__(**kw)
        if candidates < 2:
            raise RecipeError(f"the MSE observer needs at least 2 candidates, got {candidates}")
        self.candidates = candidates
        self.refine = max(int(refine), 0)
        self.bins = bins
        self.exact_max = exact_max
        self.hist: StreamingHistogram | None = None
        self.data: np.ndarray | None = None  # (N, C) the single per-channel batch, else None

    def _update(self, x: np.ndarray) -> None:
        v = self.channels_last(x)  # (N, C)
        if self.hist is None:
            self.hist = StreamingHistogram(v.shape[1], self.bins)
        self.hist.update(v)
        keep = self.axis is not None and self.count == 0 and v.shape[0] <= self.exact_max
        self.data = v.copy() if keep else None

    def _errors(self, c: int, f: np.ndarray) -> np.ndarray:
        lo, hi = self.hist.vmin[c] * f, self.hist.vmax[c] * f  # (K,)
        qp = compute_qparams(lo, hi, self.bits, self.signed, self.symmetric, self.narrow, axis=0)
        s = qp.scale.astype(np.float64)
        z = qp.zero_point.astype(np.float64)
        if self.data is not None:
            return data_sq_error(self.data[:, c].astype(np.float64), s, z, qp.qmin, qp.qmax)
        counts, edges = self.hist.channel(c)
        return histogram_sq_error(counts, edges, s, s * (qp.qmin - z), s * (qp.qmax - z))

    def _best_fraction(self, c: int) -> float:
        K = self.candidates
        coarse = np.arange(1, K + 1, dtype=np.float64) / K
        err = self._errors(c, coarse)
        fs = coarse
        if self.refine:
            k = int(np.argmin(err))
            fine = np.linspace(k / K, min(k + 2, K) / K, self.refine + 2)[1:-1]
            fs = np.concatenate([coarse, fine])
            err = np.concatenate([err, self._errors(c, fine)])
        best = np.flatnonzero(err <= err.min())
        return float(fs[best].max())  # among equal errors keep the widest range

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        C = self.hist.channels
        f = np.ones(C)
        for c in range(C):
            if self.hist.vmin[c] < self.hist.vmax[c]:
                f[c] = self._best_fraction(c)
        lo, hi = self.hist.vmin * f, self.hist.vmax * f
        if self.axis is None:
            return lo[0], hi[0]
        return lo, hi
