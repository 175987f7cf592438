"""Observer interface and registry."""
from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np

from ..errors import CalibrationError, RecipeError
from ..qmath import QParams, compute_qparams

OBSERVERS: dict[str, type["Observer"]] = {}


def register_observer(name: str) -> Callable[[type["Observer"]], type["Observer"]]:
    def deco(cls: type[Observer]) -> type[Observer]:
        cls.name = name
        OBSERVERS[name] = cls
        return cls

    return deco


def make_observer(name: str, **kwargs) -> "Observer":
    if name not in OBSERVERS:
        raise RecipeError(f"unknown observer {name!r}; registered: {sorted(OBSERVERS)}")
    return OBSERVERS[name](**kwargs)


class Observer:
    """Sees tensors one batch at a time (``update``) and proposes a clip range (``range``).

    ``axis`` selects per-channel statistics (weights); ``None`` is per tensor. ``bits`` is the
    target width: clip-optimising observers (MSE, KL, ACIQ) depend on it.
    """

    name: ClassVar[str] = "base"

    def __init__(
        self,
        bits: int = 8,
        signed: bool = True,
        symmetric: bool = False,
        narrow: bool = False,
        axis: int | None = None,
    ) -> None:
        self.bits = bits
        self.signed = signed
        self.symmetric = symmetric
        self.narrow = narrow
        self.axis = axis
        self.count = 0  # number of update() calls that saw data

    # -- to implement -------------------------------------------------------------------------
    def _update(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """The chosen (lo, hi) clip range; arrays of shape (C,) when per channel."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            return
        if not np.all(np.isfinite(x)):
            raise CalibrationError(
                f"{self.name} observer received NaN or inf values; clean the calibration data "
                "(or the model produces non-finite activations on it)"
            )
        self._update(x)
        self.count += 1

    def channels_last(self, x: np.ndarray) -> np.ndarray:
        """View ``x`` as (N, C) with the observed channel axis last (or (N, 1) per tensor)."""
        if self.axis is None:
            return x.reshape(-1, 1)
        return np.moveaxis(x, self.axis, -1).reshape(-1, x.shape[self.axis])

    def qparams(self) -> QParams:
        if self.count == 0:
            raise CalibrationError(f"{self.name} observer saw no data; calibration set is empty")
        lo, hi = self.range()
        if self.axis is None:
            lo, hi = np.asarray(lo).reshape(()), np.asarray(hi).reshape(())
        return compute_qparams(lo, hi, self.bits, self.signed, self.symmetric, self.narrow, self.axis)
