"""Weight method "aciq": data-free analytic clipping of the weights (Banner et al.), per channel
when the recipe's weight spec is per channel.

Recipe options: ``aciq_dist`` ("laplace", the paper's default; "gauss"; "auto" picks per channel by
likelihood; unset: the weight observer's name when it is an ACIQ one, e.g. ``"aciq-gauss"``) and
``aciq_grid`` ("paper": the published alpha*/b for 2^M bins; "exact": alpha* for the narrow
symmetric grid the weights really use -- it differs at 2 bits, where that grid has 3 levels).
"""
from __future__ import annotations

import numpy as np

from ..errors import RecipeError
from ..ir import Node
from ..recipes import Recipe
from ..weight_quant import quantize_with_observer, register_weight_method


def aciq_observer_name(recipe: Recipe) -> str:
    dist = recipe.option("aciq_dist")
    if dist is not None:
        return f"aciq-{dist}"
    spec_obs = recipe.weights.observer
    return spec_obs if spec_obs.startswith("aciq") else "aciq"


def weight_observer_kw(recipe: Recipe, observer: str) -> dict:
    """Extra observer arguments for weights: the ACIQ grid option, for ACIQ observers only."""
    return {"grid": recipe.option("aciq_grid", "paper")} if observer.startswith("aciq") else {}


def check_multilevel(node: Node, method: str, bits: int) -> None:
    if bits < 2:
        raise RecipeError(f"{node.describe()}: weight_method {method!r} needs >= 2 bits (got {bits}); "
                          "1-bit weights are binary: use weight_method 'xnor'")


@register_weight_method("aciq")
def aciq_weights(node: Node, recipe: Recipe, bits: int) -> tuple[np.ndarray, np.ndarray]:
    check_multilevel(node, "aciq", bits)
    name = aciq_observer_name(recipe)
    return quantize_with_observer(node.params["weight"], bits, name, recipe.weights.per_channel,
                                  **weight_observer_kw(recipe, name))
