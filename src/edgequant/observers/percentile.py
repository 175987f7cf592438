"""Percentile observer: clip at a high percentile of a streaming histogram (outliers ignored)."""
from __future__ import annotations

import numpy as np

from ..errors import RecipeError
from .base import Observer, register_observer
from .histogram import StreamingHistogram


@register_observer("percentile")
class PercentileObserver(Observer):
    """Clip range at the ``percentile``-th percentile (default 99.99; 99.999 is the other common
    choice) of everything seen, read off a fixed-size histogram (``bins`` per channel).

    Asymmetric: ``lo``/``hi`` are the ``100 - p`` and ``p`` percentiles of ``x``. Symmetric: the
    histogram is of ``|x|`` and the range is ``(-c, c)`` (``(0, c)`` unsigned) with ``c`` the
    ``p``-th percentile of ``|x|``. Quantiles interpolate linearly inside a bin and never leave
    the data's exact [min, max]; ``percentile=100`` gives min/max.
    """

    def __init__(self, percentile: float = 99.99, bins: int = 2048, **kw) -> None:
        super().__init__(**kw)
        if not 50.0 < percentile <= 100.0:
            raise RecipeError(f"percentile must be in (50, 100], got {percentile}; e.g. 99.99")
        self.percentile = float(percentile)
        self.bins = bins
        self.hist: StreamingHistogram | None = None

    def _update(self, x: np.ndarray) -> None:
        v = self.channels_last(x)  # (N, C)
        if self.symmetric:
            v = np.abs(v)
        if self.hist is None:
            self.hist = StreamingHistogram(v.shape[1], self.bins)
        self.hist.update(v)

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.percentile / 100.0
        if self.symmetric:
            c = self.hist.quantile(p)  # (C,)
            lo, hi = (-c if self.signed else np.zeros_like(c)), c
        else:
            lo, hi = self.hist.quantile(1.0 - p), self.hist.quantile(p)
        if self.axis is None:
            return lo[0], hi[0]
        return lo, hi
