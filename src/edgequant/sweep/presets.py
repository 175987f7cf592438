"""Which recipes a sweep runs: ``--recipes a,b,c`` or ``--preset all|int8|lowbit|qat``.

Presets are resolved against ``edgequant.RECIPES`` at run time, so recipes other packages register
(low-bit PTQ, QAT) appear without changes here:

* ``int8``   -- fp32, fp16, dyn8, w8a8, w8a8-pc (those registered).
* ``lowbit`` -- the sub-8-bit recipes present (w4a8, w4a4, w4a4-aciq, w2a4-aciq, w1a8-xnor,
  w1a1-xnor, w2a8-ternary first, in that order, then any other registered recipe below 8 bits).
* ``all``    -- every registered recipe, QAT ones only when ``--qat-epochs`` > 0.
* ``qat``    -- the registered QAT recipes (option ``("training", "qat")``, e.g. w4a4-qat), each
  fine-tuned with ``edgequant.qat`` for ``--qat-epochs``; where none are registered, every low-bit
  recipe fine-tuned (rows named ``<recipe>+qat``). Needs the QAT package.

A ``+qat`` suffix in ``--recipes`` (``w4a4+qat``) asks for QAT of that recipe explicitly.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..errors import RecipeError
from ..recipes import RECIPES, Recipe

PRESETS = ("all", "int8", "lowbit", "qat")
INT8 = ("fp32", "fp16", "dyn8", "w8a8", "w8a8-pc")
LOWBIT_ORDER = ("w4a8", "w4a4", "w4a4-aciq", "w2a4-aciq", "w1a8-xnor", "w1a1-xnor", "w2a8-ternary")
QAT_SUFFIX = "+qat"


@dataclass(frozen=True)
class Plan:
    """One row of the sweep: a registered recipe, optionally fine-tuned with QAT first."""

    recipe: str
    qat: bool = False

    @property
    def label(self) -> str:
        return self.recipe + (QAT_SUFFIX if self.qat and not is_qat_recipe(RECIPES[self.recipe]) else "")


# Packages that register recipes when imported; loaded (if present) before presets are resolved.
RECIPE_PACKAGES = ("edgequant.qat",)


def register_optional_recipes() -> None:
    for mod in RECIPE_PACKAGES:
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)


def qat_available() -> bool:
    if importlib.util.find_spec("edgequant.qat") is None:
        return False
    import edgequant.qat as qat

    return hasattr(qat, "finetune") or (hasattr(qat, "prepare") and hasattr(qat, "convert"))


def is_qat_recipe(r: Recipe) -> bool:
    """A recipe meant for quantization-aware training (option ``("training", "qat")``)."""
    return r.option("training") == "qat" or bool(r.option("qat", False)) or "qat" in r.name.lower().split("-")


def bits(r: Recipe) -> tuple[int, int]:
    """(weight bits, activation bits) with 32 for float parts; fp16 counts as 16-bit weights."""
    if r.mode == "float":
        return 32, 32
    if r.mode == "fp16":
        return 16, 32
    wb = min([r.weights.bits] + [o.weight_bits for o in r.overrides if o.weight_bits is not None])
    if r.mode != "static":
        return wb, 32
    ab = min([r.activations.bits] + [o.act_bits for o in r.overrides if o.act_bits is not None])
    return wb, ab


def lowbit_names() -> list[str]:
    ordered = [n for n in LOWBIT_ORDER if n in RECIPES]
    extra = [n for n, r in RECIPES.items() if n not in ordered and n not in INT8 and not is_qat_recipe(r)
             and r.mode in ("static", "dynamic") and min(bits(r)) < 8]
    return ordered + extra


def resolve(recipes: list[str] | None, preset: str | None, qat_epochs: int) -> list[Plan]:
    """The rows to run, fp32 always first (it is the reference the drops are measured against)."""
    register_optional_recipes()
    if recipes and preset:
        raise RecipeError("give either --recipes or --preset, not both")
    plans: list[Plan] = []
    if recipes:
        for name in recipes:
            base, qat = (name[: -len(QAT_SUFFIX)], True) if name.endswith(QAT_SUFFIX) else (name, False)
            if base not in RECIPES:
                raise RecipeError(f"unknown recipe {base!r} in --recipes; registered: {', '.join(RECIPES)} "
                                  f"(or a preset: --preset {'|'.join(PRESETS)})")
            plans.append(Plan(base, qat or is_qat_recipe(RECIPES[base])))
    else:
        preset = preset or "all"
        if preset not in PRESETS:
            raise RecipeError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if preset == "int8":
            plans = [Plan(n) for n in INT8 if n in RECIPES]
        elif preset == "lowbit":
            plans = [Plan(n) for n in lowbit_names()]
        elif preset == "all":
            plans = [Plan(n, is_qat_recipe(r)) for n, r in RECIPES.items() if qat_epochs > 0 or not is_qat_recipe(r)]
        else:  # qat: the registered QAT recipes, or QAT of every low-bit recipe where none are registered
            plans = [Plan(n, True) for n, r in RECIPES.items() if is_qat_recipe(r)]
            plans = plans or [Plan(n, True) for n in lowbit_names()]
    if any(p.qat for p in plans):
        if not qat_available():
            raise RecipeError("QAT rows were requested but this edgequant has no QAT package (edgequant.qat); "
                              "drop the +qat rows or the qat preset")
        if qat_epochs <= 0:
            raise RecipeError("QAT rows need --qat-epochs N (N >= 1): the number of fine-tuning epochs")
    seen, unique = set(), []
    for p in [Plan("fp32")] + plans:
        if p.label not in seen:
            seen.add(p.label)
            unique.append(p)
    return unique
