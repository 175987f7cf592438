"""QAT settings: how ranges are learned and when BatchNorm statistics freeze.

Defaults come from the recipe's ``options`` (``qat_act``, ``qat_weight``, ``freeze_bn_step``),
so a named recipe reproduces the same training setup; keyword arguments to ``prepare`` win.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import RecipeError
from ..recipes import Recipe
from .fake_quant import ACT_METHODS, WEIGHT_INITS, WEIGHT_METHODS


@dataclass(frozen=True)
class QATConfig:
    """``act_range``: "lsq" | "pact" | "ema"; ``weight_range``: "lsq" | "minmax" (1-bit tensors
    always use sign/XNOR); ``weight_init``: the LSQ weight step's start, "lsq" (2 mean|w|/sqrt(Q_P))
    or "minmax" (max|w|/Q_P). BatchNorm uses batch statistics for ``freeze_bn_step`` training steps,
    then its running statistics (None: never freeze; 0: frozen from the start). ``rounding``: the
    program's requantization to reproduce in the forward ("gemmlowp", the default of
    ``QuantizedModel.run``, or "onnxruntime"); None trains with plain fake-quant (faster, but the
    converted program then differs where gemmlowp rounds twice)."""

    act_range: str = "lsq"
    weight_range: str = "lsq"
    weight_init: str = "lsq"
    freeze_bn_step: int | None = 0
    bn_momentum: float = 0.1
    ema_momentum: float = 0.01
    rounding: str | None = "gemmlowp"

    def __post_init__(self) -> None:
        if self.act_range not in ACT_METHODS:
            raise RecipeError(f"act_range={self.act_range!r}; use one of {ACT_METHODS}")
        if self.weight_range not in WEIGHT_METHODS:
            raise RecipeError(f"weight_range={self.weight_range!r}; use one of {WEIGHT_METHODS}")
        if self.weight_init not in WEIGHT_INITS:
            raise RecipeError(f"weight_init={self.weight_init!r}; use one of {WEIGHT_INITS}")
        if self.freeze_bn_step is not None and self.freeze_bn_step < 0:
            raise RecipeError(f"freeze_bn_step={self.freeze_bn_step}; use a step count >= 0, or None to never freeze")
        if self.rounding not in ("gemmlowp", "onnxruntime", None):
            raise RecipeError(f"rounding={self.rounding!r}; use 'gemmlowp', 'onnxruntime' or None (plain fake-quant)")
        if not 0.0 < self.bn_momentum <= 1.0 or not 0.0 < self.ema_momentum <= 1.0:
            raise RecipeError("bn_momentum and ema_momentum must lie in (0, 1]")

    @staticmethod
    def from_recipe(recipe: Recipe, **overrides) -> "QATConfig":
        base = QATConfig(act_range=recipe.option("qat_act", "lsq"), weight_range=recipe.option("qat_weight", "lsq"),
                         weight_init=recipe.option("qat_weight_init", "lsq"), freeze_bn_step=recipe.option("freeze_bn_step", 0))
        unknown = set(overrides) - set(QATConfig.__dataclass_fields__)
        if unknown:
            raise RecipeError(f"unknown QAT settings {sorted(unknown)}; known: {sorted(QATConfig.__dataclass_fields__)}")
        return replace(base, **overrides)
