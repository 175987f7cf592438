"""Time limits for long phases: a deadline set around a piece of work, checked inside its loops.

A sweep row must never hang the sweep. ``Deadline`` is a context manager that makes itself the
current deadline (a stack: the innermost one bites first); the loops that can run long
(calibration, reconstruction steps, QAT epochs, evaluation chunks) call ``check_deadline(phase)``,
which raises ``TimeLimitExceeded`` once the time is up. Outside any deadline the check costs one
list lookup and never raises, so library users who set none see no change.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import EdgequantError


class TimeLimitExceeded(EdgequantError):
    """A phase ran past its deadline; ``phase``, ``elapsed_s``, ``limit_s`` say where and when."""

    def __init__(self, phase: str, elapsed_s: float, limit_s: float, projected_s: float | None = None) -> None:
        self.phase, self.elapsed_s, self.limit_s, self.projected_s = phase, elapsed_s, limit_s, projected_s
        proj = f", projected {projected_s:.0f} s" if projected_s is not None else ""
        super().__init__(f"{phase}: time limit of {limit_s:.0f} s reached after {elapsed_s:.0f} s{proj}")

    def as_dict(self) -> dict:
        return {"phase": self.phase, "elapsed_s": round(self.elapsed_s, 3), "limit_s": round(self.limit_s, 3),
                "projected_s": None if self.projected_s is None else round(self.projected_s, 3)}


_STACK: list["Deadline"] = []


@dataclass
class Deadline:
    """``limit_s`` seconds from entering (None: no limit). Nested deadlines all apply."""

    limit_s: float | None
    label: str = ""
    start: float = 0.0

    def __enter__(self) -> "Deadline":
        self.start = time.perf_counter()
        _STACK.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _STACK.remove(self)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    @property
    def remaining_s(self) -> float:
        return float("inf") if self.limit_s is None else self.limit_s - self.elapsed_s

    def check(self, phase: str, projected_s: float | None = None) -> None:
        """Raise when the time is up, or when ``projected_s`` (the phase's projected total from now
        on, if the caller can estimate it) would overrun the time left."""
        if self.limit_s is None:
            return
        el = self.elapsed_s
        if el > self.limit_s or (projected_s is not None and el + projected_s > self.limit_s):
            raise TimeLimitExceeded(f"{self.label}: {phase}" if self.label else phase, el, self.limit_s,
                                    None if projected_s is None else el + projected_s)


def check_deadline(phase: str, projected_s: float | None = None) -> None:
    """Check every active deadline (see ``Deadline.check``); a no-op when none is set."""
    for d in _STACK:
        d.check(phase, projected_s)


def remaining_s() -> float:
    """Seconds left on the tightest active deadline (inf when none)."""
    return min((d.remaining_s for d in _STACK), default=float("inf"))
