"""The sweep's ``mixed`` row (``--mixed size|latency``): ``edgequant.search`` under the sweep's budget.

The search runs on the sweep's model, calibration and evaluation data and metric, then its recipe
is measured like every other row (``runner._measure``: quantized again, evaluated on the verified
engine, timed, simulated, per-layer SQNR), so the row stands on the same footing as the uniform
ones: on the frontier plot and eligible for the answer. ``report["mixed"]`` holds the search's
summary (chosen widths per layer, every candidate) for the report and ``layers.png``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ..deadline import Deadline, TimeLimitExceeded
from ..errors import EdgequantError
from ..recipes import Recipe
from .presets import Plan

MODES = ("off", "size", "latency")


@dataclass(frozen=True)
class MixedPlan(Plan):
    """A sweep row whose recipe is the search's answer (not a registered recipe)."""

    found: Recipe | None = None
    row_label: str = "mixed"

    @property
    def label(self) -> str:
        return self.row_label

    def resolved(self) -> Recipe:
        return self.found


def search_for_sweep(cfg, model, data, calib_x, limit_s: float | None,
                     say: Callable[[str], None]) -> tuple[MixedPlan | None, dict]:
    """(plan to measure, summary); plan None when the search found nothing (summary says why)."""
    from ..mixed import search

    label = f"mixed-{cfg.mixed}"
    t = time.perf_counter()
    try:
        with Deadline(limit_s, label=label):
            res = search(model, calib_x, data.eval, budget=cfg.budget, objective=cfg.mixed,
                         widths=tuple(cfg.mixed_widths), metric=cfg.metric or "top1",
                         rounding=cfg.rounding, backends=cfg.fast_backends, threads=cfg.threads,
                         latency_batch=cfg.latency_batch, repeats=cfg.repeats,
                         progress=lambda what, done, total: say(what))
    except TimeLimitExceeded as e:
        return None, {"row": label, "status": "cut", "error": str(e), "cut": e.as_dict(),
                      "search_s": time.perf_counter() - t}
    except EdgequantError as e:  # no program within budget, bad settings: a failed row, not a failed sweep
        return None, {"row": label, "status": "failed", "error": f"{type(e).__name__}: {e}",
                      "search_s": time.perf_counter() - t}
    summary = res.summary() | {"row": label, "status": "ok", "search_s": time.perf_counter() - t}
    return MixedPlan(res.recipe.name, found=res.recipe, row_label=label), summary


def failed_row(summary: dict) -> dict:
    """A row for a search that found nothing, in the rows' schema."""
    return {"recipe": summary["row"], "base_recipe": None, "qat": False, "budget": {}, "mode": "static",
            "weight_bits": None, "act_bits": None, "description": "edgequant.search", "status": summary["status"],
            "error": summary["error"], "cut": summary.get("cut"), "extras_cut": None, "limit_s": None,
            "latency_by_runtime": {}, "runtime_notes": {}, "runtime_agreement_pct": {}, "latency_ms": None,
            "runtime": None, "sim_agreement_pct": None, "accuracy": None, "drop": None, "size_bytes": None,
            "size_ratio": None, "quantize_s": None, "layers_sqnr": [], "mixed": True,
            "search_s": summary["search_s"], "measure_s": summary["search_s"], "peak_rss_mb": None}
