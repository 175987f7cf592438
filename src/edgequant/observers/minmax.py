"""Min/max observers: the naive baseline (whole range, no clipping)."""
from __future__ import annotations

import numpy as np

from .base import Observer, register_observer


@register_observer("minmax")
class MinMaxObserver(Observer):
    """Running min and max over everything seen."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    def _update(self, x: np.ndarray) -> None:
        v = self.channels_last(x)
        lo, hi = v.min(axis=0), v.max(axis=0)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lo, self.hi


@register_observer("moving_average")
class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of per-batch min/max (robust to one outlier batch)."""

    def __init__(self, momentum: float = 0.1, **kw) -> None:
        super().__init__(**kw)
        self.momentum = momentum
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    def _update(self, x: np.ndarray) -> None:
        v = self.channels_last(x)
        lo, hi = v.min(axis=0), v.max(axis=0)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo = (1 - m) * self.lo + m * lo
            self.hi = (1 - m) * self.hi + m * hi

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lo, self.hi
