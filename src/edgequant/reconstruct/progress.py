"""Progress of a reconstruction: a rich bar on a terminal, plain rate-limited lines otherwise (logs)."""
from __future__ import annotations

import sys
import time

LINE_EVERY_S = 20.0  # plain lines (stderr not a terminal): at most one per this many seconds, plus the last

from ..deadline import check_deadline


class Progress:
    """``advance(label, loss)`` once per optimisation step, ``unit_done(label, seconds)`` per unit.
    ``enabled=None``: a bar when stderr is a terminal, else a plain line per finished unit (rate
    limited, for logs); ``False``: silent. Rich is optional; without it a line per unit is printed."""

    def __init__(self, total: int, enabled: bool | None = None, title: str = "reconstruct") -> None:
        self.lines = enabled is None and not sys.stderr.isatty()
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.title, self._t0, self._last_line = title, time.monotonic(), float("-inf")
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

    def skip(self, n: int) -> None:
        """``n`` steps that will not run (a CPU budget cut them) count as done."""
        if n <= 0:
            return
        self._done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def unit_done(self, label: str, seconds: float) -> None:
        """A unit (layer or block) finished: in line mode, say so if the last line is old enough."""
        now = time.monotonic()
        last = self._done >= self.total and self._last_line != float("inf")
        if self.lines and (now - self._last_line >= LINE_EVERY_S or last):
            el = now - self._t0
            eta = el / max(self._done, 1) * (self.total - self._done)
            print(f"{self.title}: {self._done}/{self.total} steps, {label[:60]} {seconds:.1f} s; "
                  f"elapsed {el:.0f} s, about {eta:.0f} s left", file=sys.stderr, flush=True)
            self._last_line = float("inf") if last else now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
