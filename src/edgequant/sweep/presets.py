"""Which recipes a sweep runs: ``--recipes a,b,c`` or ``--preset default|all|int8|lowbit|qat``.

Presets are resolved against ``edgequant.RECIPES`` at run time, so recipes other packages register
(low-bit PTQ, reconstruction, QAT) appear without changes here:

* ``default`` -- what ``edgequant sweep`` runs: one row of every family from fp32 to 1 bit, sized to
  finish in about a minute on two cores for the built-in model: the int8 set, the low-bit PTQ
  recipes, ``w8a16-res`` (16-bit activations), one reconstruction recipe per width (``w4a8-adaround``, ``w4a4-brecq``,
  ``w2a4-brecq-qdrop``) at ``DEFAULT_ITERATIONS`` iterations, and the QAT recipes for
  ``DEFAULT_QAT_EPOCHS`` epoch (only where the data has a training split).
* ``int8``   -- fp32, fp16, dyn8, w8a8, w8a8-pc, w8a16-res (those registered).
* ``lowbit`` -- the sub-8-bit post-training recipes present (w4a8, w4a4, w4a4-aciq, w2a4-aciq,
  w1a8-xnor, w1a1-xnor, w2a8-ternary first, in that order, then any other registered post-training
  recipe below 8 bits, reconstruction included, at its own budget).
* ``all``    -- every registered recipe at its own budget, QAT ones for ``--qat-epochs`` (default 3;
  0 leaves them out).
* ``qat``    -- the registered QAT recipes (option ``("training", "qat")``, e.g. w4a4-qat), each
  fine-tuned with ``edgequant.qat`` for ``--qat-epochs``; where none are registered, every low-bit
  recipe fine-tuned (rows named ``<recipe>+qat``). Needs the QAT package.

Every preset sweep also gets the recipe ``quantize`` picks for the captured graph when the preset
lacks it (a transformer's ``w8a16``; ``runner._with_graph_default``).

``--iterations N`` sets the reconstruction budget of every reconstruction row (any preset).

A ``+qat`` suffix in ``--recipes`` (``w4a4+qat``) asks for QAT of that recipe explicitly.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass

from ..errors import RecipeError
from ..recipes import RECIPES, Recipe

PRESETS = ("default", "all", "int8", "lowbit", "qat")
INT8 = ("fp32", "fp16", "dyn8", "w8a8", "w8a8-pc", "w8a16-res")
# slow rows: int16 activations run in the interpreter, or in ONNX Runtime as float32 convs / u8s8
# MatMulIntegers of the input's bytes (export/onnx/wide.py; several times an int8 row): the default
# preset puts them after the other post-training rows, so they inherit the time the fast rows leave
# (each row gets an even share of what is left, ``bounds.row_limit_s``)
SLOW_ROWS = ("w8a16-res",)
LOWBIT_ORDER = ("w4a8", "w4a8-keep8", "w4a4", "w4a4-keep8", "w4a4-aciq", "w2a4-aciq", "w1a8-xnor", "w1a1-xnor", "w2a8-ternary")
DEFAULT_RECONSTRUCT = ("w4a8-adaround", "w4a4-brecq", "w2a4-brecq-qdrop")
DEFAULT_ITERATIONS = 100  # per layer (AdaRound) / block (BRECQ) in the default preset; recipes ship 300 (AdaRound) and 1000 (BRECQ)
DEFAULT_QAT_EPOCHS = 1  # default preset; ``all`` and ``qat`` fine-tune QAT_EPOCHS
QAT_EPOCHS = 3
QAT_SUFFIX = "+qat"


@dataclass(frozen=True)
class Plan:
    """One row of the sweep: a registered recipe, optionally fine-tuned with QAT first, optionally
    with its reconstruction budget (option ``iterations``) replaced."""

    recipe: str
    qat: bool = False
    iterations: int | None = None

    @property
    def label(self) -> str:
        return self.recipe + (QAT_SUFFIX if self.qat and not is_qat_recipe(RECIPES[self.recipe]) else "")

    def resolved(self) -> Recipe:
        """The recipe this row runs: the registered one, with ``iterations`` where the plan sets it."""
        r = RECIPES[self.recipe]
        if self.iterations is None or r.option("iterations") is None:
            return r
        return dataclasses.replace(r, options=tuple((k, self.iterations if k == "iterations" else v) for k, v in r.options))


def is_reconstruction(r: Recipe) -> bool:
    return r.option("reconstruct") is not None


def default_qat_epochs(preset: str | None, recipes: list[str] | None) -> int:
    """QAT epochs when ``--qat-epochs`` is not given: 1 in the default sweep, else 3."""
    return DEFAULT_QAT_EPOCHS if not recipes and (preset or "default") == "default" else QAT_EPOCHS


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


def resolve(recipes: list[str] | None, preset: str | None, qat_epochs: int, iterations: int | None = None,
            has_train: bool = True) -> list[Plan]:
    """The rows to run, fp32 always first (it is the reference the drops are measured against).

    ``iterations`` replaces every reconstruction row's budget (the default preset uses
    ``DEFAULT_ITERATIONS``). Presets that add QAT rows on their own (``default``, ``all``) leave
    them out when ``has_train`` is false; asking for them by name or ``qat`` still needs a train set.
    """
    register_optional_recipes()
    if iterations is not None and iterations < 1:
        raise RecipeError(f"--iterations {iterations}: the reconstruction budget must be >= 1")
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
        preset = preset or "default"
        if preset not in PRESETS:
            raise RecipeError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if preset == "default":
            order = tuple(n for n in INT8 if n not in SLOW_ROWS) + LOWBIT_ORDER + SLOW_ROWS + DEFAULT_RECONSTRUCT
            names = [n for n in order if n in RECIPES]
            plans = [Plan(n, iterations=(iterations or DEFAULT_ITERATIONS) if is_reconstruction(RECIPES[n]) else None)
                     for n in names]
            if qat_epochs > 0 and has_train and qat_available():
                plans += [Plan(n, True) for n, r in RECIPES.items() if is_qat_recipe(r)]
        elif preset == "int8":
            plans = [Plan(n) for n in INT8 if n in RECIPES]
        elif preset == "lowbit":
            plans = [Plan(n) for n in lowbit_names()]
        elif preset == "all":
            plans = [Plan(n, is_qat_recipe(r)) for n, r in RECIPES.items()
                     if not is_qat_recipe(r) or (qat_epochs > 0 and has_train)]
        else:  # qat: the registered QAT recipes, or QAT of every low-bit recipe where none are registered
            plans = [Plan(n, True) for n, r in RECIPES.items() if is_qat_recipe(r)]
            plans = plans or [Plan(n, True) for n in lowbit_names()]
    if any(p.qat for p in plans):
        if not qat_available():
            raise RecipeError("QAT rows were requested but this edgequant has no QAT package (edgequant.qat); "
                              "drop the +qat rows or the qat preset")
        if qat_epochs <= 0:
            raise RecipeError("QAT rows need --qat-epochs N (N >= 1): the number of fine-tuning epochs")
    if iterations is not None:
        plans = [dataclasses.replace(p, iterations=iterations) if is_reconstruction(RECIPES[p.recipe]) else p for p in plans]
    seen, unique = set(), []
    for p in [Plan("fp32")] + plans:
        if p.label not in seen:
            seen.add(p.label)
            unique.append(p)
    return unique
