"""Reconstruction-based PTQ below 8 bits: AdaRound (per layer), BRECQ (per block) and QDrop.

    import edgequant as eq
    q = eq.quantize(model, "w4a4-brecq", calib)                       # recipe default budget
    q = eq.reconstruct.quantize(model, "w4a4-brecq", calib, iterations=2000, progress=True)

The learned integers replace the weight method's nearest-rounded ones in the same integer program
(``weight_method="learned_rounding"``); everything else (scales, activation grids, lowering) is
unchanged. Cost: every unit trains for ``iterations`` steps of ``batch_size`` samples through that
unit only, so time grows linearly with depth x iterations x the unit's cost per sample; see
``bench/ptq_reconstruct.py`` for measured times.
"""
from __future__ import annotations

from ..api import PTQ_STEPS
from ..recipes import LayerOverride, Recipe, TensorSpec, register_recipe
from .adaround import AdaRoundWeight, BetaSchedule, rectified_sigmoid
from .blocks import Unit, cut_points, find_units
from .brecq import ReconConfig, ReconResult, WeightGrid, reconstruct_graph
from .pipeline import LEARNED, METHODS, config_from_recipe, learned_weights, quantize, reconstruct_step, weight_grid, with_options

if reconstruct_step not in PTQ_STEPS:
    PTQ_STEPS.append(reconstruct_step)

DEFAULT_ITERATIONS = {"adaround": 100, "brecq": 200}


def make_recipe(weight_bits: int, act_bits: int, method: str = "brecq", qdrop: float = 0.0, name: str | None = None,
                iterations: int | None = None, base: str = "observer", overrides: tuple[LayerOverride, ...] = (),
                **options) -> Recipe:
    """A static recipe that reconstructs at W``weight_bits``A``act_bits`` (per-channel symmetric
    weights, MSE-searched weight and activation clips as the starting grid)."""
    label = method + ("-qdrop" if qdrop and method == "brecq" else "")
    opts = {"reconstruct": method, "weight_method": LEARNED, "reconstruct_base": base,
            "iterations": iterations or DEFAULT_ITERATIONS[method], **({"qdrop": qdrop} if qdrop else {}), **options}
    return Recipe(
        name or f"w{weight_bits}a{act_bits}-{label}", "static",
        weights=TensorSpec(weight_bits, symmetric=True, narrow=True, per_channel=True, observer="mse"),
        activations=TensorSpec(act_bits, observer="mse"), overrides=tuple(overrides), options=tuple(opts.items()),
        description=f"{label} learned weight rounding at W{weight_bits}A{act_bits} (arXiv "
                    + {"adaround": "2004.10568", "brecq": "2102.05426"}[method] + (", QDrop 2203.05740" if qdrop else "") + ")")


for _wb, _ab, _m, _p in ((4, 8, "adaround", 0.0), (4, 4, "brecq", 0.0), (2, 4, "brecq", 0.0),
                         (4, 4, "brecq", 0.5), (2, 4, "brecq", 0.5)):
    register_recipe(make_recipe(_wb, _ab, _m, _p))

__all__ = ["AdaRoundWeight", "BetaSchedule", "rectified_sigmoid", "Unit", "cut_points", "find_units", "ReconConfig",
           "ReconResult", "WeightGrid", "reconstruct_graph", "LEARNED", "METHODS", "config_from_recipe",
           "learned_weights", "quantize", "reconstruct_step", "weight_grid", "with_options", "make_recipe",
           "DEFAULT_ITERATIONS"]
