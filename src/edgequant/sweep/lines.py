"""Sweep progress as plain lines, for stderr that is not a terminal (a log file, a pipe, CI).

A live display writes nothing useful to a log, and a sweep that runs for many minutes must show
where it is. One line when a phase starts; updates within one phase (``"w8a8: evaluate"`` after
``"w8a8: quantize"``, the sensitivity study's layers: same text before ": ") at most every
``every_s`` seconds, so a small model's log stays short and a slow row still shows where it is;
and one line per finished row with its numbers and the engine that produced them.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from .report import fmt_bytes


class PlainProgress:
    def __init__(self, stream: TextIO | None = None, every_s: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.t0 = time.perf_counter()
        self._phase: str | None = None
        self._last = float("-inf")

    def _line(self, text: str) -> None:
        self.stream.write(f"[edgequant {time.perf_counter() - self.t0:7.1f}s] {text}\n")
        self.stream.flush()

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.perf_counter()
        phase = what.split(": ")[0]
        if phase == self._phase and now - self._last < self.every_s:
            return
        self._phase, self._last = phase, now
        self._line(f"[{done}/{total}] {what}")

    def row(self, r: dict) -> None:
        """The finished row: recipe, accuracy, size, time, engine (or why it has no numbers)."""
        t = r.get("measure_s")
        took = f"{t:.1f} s" if t is not None else "-"
        rss = f", peak RSS {r['peak_rss_mb']:.0f} MB" if r.get("peak_rss_mb") is not None else ""
        if r["status"] == "ok":
            eng = r.get("eval_engine", "interpreter")
            self._line(f"row {r['recipe']}: {r['accuracy']:.2f}% (drop {r['drop']:+.2f}), "
                       f"{fmt_bytes(r['size_bytes'])}, {took}{rss}, engine {eng} ({r.get('eval_rounding')} rounding)")
        elif r["status"] == "cut":
            c = r.get("cut") or {}
            self._line(f"row {r['recipe']}: CUT in {c.get('phase')} after {took} (limit {c.get('limit_s', 0):.0f} s){rss}")
        else:
            self._line(f"row {r['recipe']}: FAILED after {took}{rss}: {str(r.get('error'))[:160]}")
