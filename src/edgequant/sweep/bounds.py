"""Bounded time and memory for a sweep: each row's time limit, and which quantized models to keep.

Time: the whole sweep has ``max_minutes``; a row gets ``max_row_minutes`` when given, otherwise an
even share of what is left (minus a reserve for the sensitivity study and the report), so rows that
finish early leave their time to the rows after them. A row that would overrun is cut (status
``cut``) and the sweep goes on. Memory: a quantized model is kept only while it can still be part of
the answer (smallest or fastest within the budget) or be the row the sensitivity study uses; the
others are dropped as soon as a row finishes, so memory does not grow with the number of rows.
"""
from __future__ import annotations

from ..deadline import Deadline
from .choice import choose, lowest

SENSITIVITY_RESERVE = 0.12  # of the sweep's limit, kept for the sensitivity study and the report
REPORT_RESERVE = 0.03


def row_limit_s(sweep: Deadline, rows_left: int, max_row_minutes: float | None, sensitivity: bool) -> float | None:
    """Seconds the next row may take (None: no limit); 0 when the sweep's time is spent."""
    row_cap = None if max_row_minutes is None else 60.0 * max_row_minutes
    if sweep.limit_s is None:
        return row_cap
    reserve = sweep.limit_s * (REPORT_RESERVE + (SENSITIVITY_RESERVE if sensitivity else 0.0))
    share = max(sweep.remaining_s - reserve, 0.0) / max(rows_left, 1)
    if row_cap is not None:  # an explicit per-row limit, but never past the sweep's own end
        return max(min(row_cap, sweep.remaining_s - sweep.limit_s * REPORT_RESERVE), 0.0)
    return share


def needed(rows: list[dict], budget: float, sensitivity: bool) -> set[str]:
    """Row labels whose quantized models may still be needed: the answer so far and the lowest row."""
    smallest, fastest = choose(rows, budget)
    keep = {r["recipe"] for r in (smallest, fastest) if r is not None}
    low = lowest(rows) if sensitivity else None
    if low is not None:
        keep.add(low["recipe"])
    return keep
