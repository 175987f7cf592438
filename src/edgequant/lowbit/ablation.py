"""The ablation of Banner et al.'s table: each method alone and all three, at one width pair.

Rows: naive min/max; +ACIQ (weights and activations); +per-channel bit allocation; +bias
correction; all three (= the ``wXaY-aciq`` recipes). Everything else is the same: per-channel
symmetric weights, per-tensor asymmetric activations.
"""
from __future__ import annotations

from ..recipes import Recipe, TensorSpec, low_bit_weights

ROWS = ("naive", "+aciq", "+bit_alloc", "+bias_corr", "all three")


def ablation_recipes(weight_bits: int, act_bits: int, bias_correction: str = "banner",
                     aciq_grid: str = "exact") -> dict[str, Recipe]:
    """{row name: Recipe} for ``W{weight_bits}A{act_bits}``; ``aciq_grid`` as in ``lowbit.clip``."""
    tag = f"w{weight_bits}a{act_bits}"

    def make(row: str, observer: str, options: tuple) -> Recipe:
        return Recipe(f"{tag}-ablation-{row.strip('+').replace(' ', '-')}", "static",
                      weights=low_bit_weights(weight_bits, observer),
                      activations=TensorSpec(bits=act_bits, observer=observer), options=options,
                      description=f"{tag} ablation row {row!r}")

    grid = (("aciq_grid", aciq_grid),)
    alloc = (("weight_method", "bit_alloc"),)
    corr = (("bias_correction", bias_correction),)
    return {
        "naive": make("naive", "minmax", ()),
        "+aciq": make("+aciq", "aciq", (("weight_method", "aciq"),) + grid),
        "+bit_alloc": make("+bit_alloc", "minmax", alloc),
        "+bias_corr": make("+bias_corr", "minmax", corr),
        "all three": make("all three", "aciq", alloc + corr + grid),
    }
