"""Observers: streaming range estimators that pick the clip range of a tensor.

Each observer is one small module registered by name; ``make_observer("kl", bits=8)`` builds one.
Observers keep fixed-size state (running min/max, histograms) so calibration memory does not grow
with the number of samples.
"""
from __future__ import annotations

from .base import OBSERVERS, Observer, make_observer, register_observer
from . import minmax  # noqa: F401  (registers "minmax", "moving_average")

for _optional in ("percentile", "mse", "kl", "aciq"):
    try:  # each lives in its own file; a missing one simply is not registered
        __import__(f"{__name__}.{_optional}")
    except ModuleNotFoundError as _e:  # pragma: no cover - only while a module is being written
        if _e.name != f"{__name__}.{_optional}":
            raise

__all__ = ["OBSERVERS", "Observer", "make_observer", "register_observer"]
