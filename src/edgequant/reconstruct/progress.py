"""Progress of a reconstruction: a rich bar on a terminal, silent otherwise (tests, pipes)."""
from __future__ import annotations

import sys

from ..deadline import check_deadline


class Progress:
    """``advance(label, loss)`` once per optimisation step. ``enabled=None``: on when stderr is a
    terminal. Rich is optional; without it a line per unit is printed instead."""

    def __init__(self, total: int, enabled: bool | None = None, title: str = "reconstruct") -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.total = max(int(total), 1)
        self._bar = self._task = None
        self._label = None
        self._done = 0
        if self.enabled:
            try:
                from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

                self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                         TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
                self._bar.start()
                self._task = self._bar.add_task(title, total=self.total)
            except ImportError:
                self._bar = None

    def advance(self, label: str, loss: float) -> None:
        self._done += 1
        check_deadline(f"reconstruction {label}")  # a sweep row's time limit bites between steps
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{label[:48]:<48} loss {loss:9.4g}")
        elif label != self._label:
            print(f"[{self._done}/{self.total}] {label}", file=sys.stderr)
        self._label = label

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
