"""Recipes: named, frozen, versioned quantization configs that round-trip to JSON.

A recipe says *what* to quantize and how wide; algorithms (observers, ACIQ, bias correction) are
named in it so that the same config reproduces the same program.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import RecipeError

RECIPE_SCHEMA_VERSION = 1
Mode = Literal["float", "fp16", "dynamic", "static"]


@dataclass(frozen=True)
class TensorSpec:
    """How one kind of tensor (weights or activations) is quantized."""

    bits: int = 8
    symmetric: bool = False
    narrow: bool = False
    per_channel: bool = False
    observer: str = "minmax"

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise RecipeError(f"bits={self.bits}: the integer program supports 1..8-bit tensors (int8 containers)")


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer widths for layers whose module path matches ``pattern`` (fnmatch, e.g. 'fc*')."""

    pattern: str
    weight_bits: int | None = None
    act_bits: int | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    mode: Mode
    weights: TensorSpec | None = None
    activations: TensorSpec | None = None
    overrides: tuple[LayerOverride, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()  # algorithm switches, e.g. (("bias_correction", "empirical"),)
    description: str = ""
    version: int = RECIPE_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.mode not in ("float", "fp16", "dynamic", "static"):
            raise RecipeError(f"recipe {self.name!r}: unknown mode {self.mode!r}")
        if self.mode in ("dynamic", "static") and self.weights is None:
            raise RecipeError(f"recipe {self.name!r}: mode {self.mode} needs a weights TensorSpec")
        if self.mode == "static" and self.activations is None:
            raise RecipeError(f"recipe {self.name!r}: static mode needs an activations TensorSpec")

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def layer_bits(self, module: str) -> tuple[int | None, int | None]:
        """(weight_bits, act_bits) for a layer, after overrides (last match wins)."""
        wb = self.weights.bits if self.weights else None
        ab = self.activations.bits if self.activations else None
        for o in self.overrides:
            if fnmatch.fnmatch(module, o.pattern):
                wb = o.weight_bits if o.weight_bits is not None else wb
                ab = o.act_bits if o.act_bits is not None else ab
        return wb, ab

    def with_overrides(self, *overrides: LayerOverride) -> "Recipe":
        return dataclasses.replace(self, overrides=self.overrides + tuple(overrides))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_dict(d: dict) -> "Recipe":
        if d.get("version", 0) > RECIPE_SCHEMA_VERSION:
            raise RecipeError(f"recipe version {d.get('version')} is newer than this edgequant ({RECIPE_SCHEMA_VERSION}); upgrade edgequant")
        try:
            return Recipe(
                name=d["name"], mode=d["mode"],
                weights=TensorSpec(**d["weights"]) if d.get("weights") else None,
                activations=TensorSpec(**d["activations"]) if d.get("activations") else None,
                overrides=tuple(LayerOverride(**o) for o in d.get("overrides", ())),
                options=tuple((k, v) for k, v in d.get("options", ())),
                description=d.get("description", ""), version=d.get("version", RECIPE_SCHEMA_VERSION),
            )
        except (KeyError, TypeError) as e:
            raise RecipeError(f"malformed recipe JSON: {e}") from e

    @staticmethod
    def from_json(s: str) -> "Recipe":
        return Recipe.from_dict(json.loads(s))


W8_PC = TensorSpec(bits=8, symmetric=True, narrow=True, per_channel=True)
W8_PT = TensorSpec(bits=8, symmetric=True, narrow=True, per_channel=False)
A8 = TensorSpec(bits=8)

RECIPES: dict[str, Recipe] = {}


def register_recipe(r: Recipe) -> Recipe:
    RECIPES[r.name] = r
    return r


register_recipe(Recipe("fp32", "float", description="the float model, the baseline"))
register_recipe(Recipe("fp16", "fp16", description="weights stored in half precision"))
register_recipe(Recipe("dyn8", "dynamic", weights=W8_PC, activations=A8,
                       description="int8 weights; activations quantized per batch at run time"))
# Per-token run-time scales (kernels/conv.py) and SmoothQuant (lowbit/smooth.py) for transformers:
# all-MiniLM-L6-v2 as loaded, mean cosine vs fp32: dyn8 (one scale per batch, as ONNX Runtime's
# quantize_dynamic) 0.993, per token 0.999, + SmoothQuant 0.9995 (bench/RESULTS.md, issue 16)
register_recipe(Recipe("dyn8-tok", "dynamic", weights=W8_PC, activations=A8, options=(("dynamic_scale", "token"),),
                       description="int8 weights; activations quantized per token (row) at run time"))
register_recipe(Recipe("dyn8-sq", "dynamic", weights=W8_PC, activations=A8,
                       options=(("dynamic_scale", "token"), ("smooth", 0.5)),
                       description="int8 weights; SmoothQuant (alpha 0.5) and activations quantized per token at run time"))
register_recipe(Recipe("w8a8", "static", weights=W8_PT, activations=A8,
                       description="int8 per-tensor weights, int8 activations, integer-only"))
# Empirical bias correction (DFQ) by default: on EfficientNet-Lite1 (real crops) it lifted top-1
# agreement with fp32 from 92.5% to 96.0%; the weights' rounding error on 3x3 depthwise filters
# (9 weights per channel) is far from zero-mean (bench/RESULTS.md, issue 14)
register_recipe(Recipe("w8a8-pc", "static", weights=W8_PC, activations=A8, options=(("bias_correction", "empirical"),),
                       description="int8 per-channel weights, int8 activations, integer-only, empirical bias "
                                   "correction (default)"))

# 16-bit activations (edgequant.act16, TFLite 16x8) wherever producer and consumers have int16
# kernels: per-tensor int8 cannot hold BERT-style outlier channels (all-MiniLM-L6-v2: cosine 0.856
# at w8a8-pc, 0.9987 here); on a CNN that is every activation. EfficientNet-Lite1 on 600 real crops
# (agreement with fp32): w8a8-pc 92.8%, int16 activations 95.8%, + exact equalization 96.3%, +
# equalization of the ReLU6 groups too (equalize=True) 95.5%: that one changes the float function
# beyond the calibrated maxima and loses on crops unlike the 64 calibration ones (bench/RESULTS.md).
# The equalization only touches conv chains, so transformers are unchanged by it.
register_recipe(Recipe("w8a16-res", "static", weights=W8_PC, activations=A8,
                       options=(("bias_correction", "empirical"), ("act16", "residual"), ("equalize", "exact")),
                       description="int8 per-channel weights, int16 activations wherever the ops have int16 kernels "
                                   "(a transformer's residual stream, LayerNorm and FFN tensors; a CNN's every "
                                   "activation), int8 elsewhere; int64 accumulators; cross-layer equalization "
                                   "where it leaves the float function unchanged"))
# + Q/K/V, attention scores, softmax probabilities and context in int16 (int16 x int16 matmuls):
# every activation with an int16 kernel; the default for graphs with LayerNorm/attention (defaults.py)
register_recipe(Recipe("w8a16", "static", weights=W8_PC, activations=A8,
                       options=(("bias_correction", "empirical"), ("act16", "all")),
                       description="int8 per-channel weights, int16 activations wherever an int16 kernel exists (residual "
                                   "stream, LayerNorm, FFN, attention; int64 accumulators); the default on transformers"))

# -- below 8 bits: Banner et al. post-training methods and binarization (edgequant/lowbit) ------------
def low_bit_weights(bits: int, observer: str = "minmax") -> TensorSpec:
    """Symmetric, narrow-range, per-channel weights of ``bits`` bits."""
    return TensorSpec(bits=bits, symmetric=True, narrow=True, per_channel=True, observer=observer)


# + ACIQ observers; weight clips for the narrow grid the weights use (see lowbit/clip.py)
ACIQ_FULL = (("weight_method", "bit_alloc"), ("bias_correction", "banner"), ("aciq_grid", "exact"))
FIRST_LAST_8 = (("first_last_bits", 8),)

register_recipe(Recipe("w4a8", "static", weights=low_bit_weights(4), activations=A8,
                       description="4-bit per-channel weights (min/max), int8 activations"))
# What collapses W4A8 on depthwise nets (EfficientNet-Lite1, agreement with fp32: 2.0%): 4-bit 3x3
# depthwise filters (8-bit depthwise: 20.5%) and the biased rounding error they leave (+ empirical
# bias correction: 75.5%). The depthwise layers are ~1-2% of the weights (bench/RESULTS.md, issue 14)
KEEP8 = (("depthwise_bits", 8), ("first_last_bits", 8))
register_recipe(Recipe("w4a8-keep8", "static", weights=low_bit_weights(4), activations=A8,
                       options=KEEP8 + (("bias_correction", "empirical"),),
                       description="4-bit per-channel weights except depthwise and first/last layers (8-bit), int8 "
                                   "activations, empirical bias correction"))
register_recipe(Recipe("w4a4-keep8", "static", weights=low_bit_weights(4), activations=TensorSpec(bits=4, observer="mse"),
                       options=KEEP8 + (("bias_correction", "empirical"),),
                       description="W4A4 except depthwise and first/last layers (8-bit), MSE activation clips, "
                                   "empirical bias correction"))
register_recipe(Recipe("w4a4", "static", weights=low_bit_weights(4), activations=TensorSpec(bits=4),
                       description="4-bit weights and activations, min/max ranges: the naive baseline"))
register_recipe(Recipe("w4a4-aciq", "static", weights=low_bit_weights(4, "aciq"),
                       activations=TensorSpec(bits=4, observer="aciq"), options=ACIQ_FULL,
                       description="W4A4, Banner et al.: ACIQ clipping + per-channel bit allocation + bias correction"))
register_recipe(Recipe("w2a4-aciq", "static", weights=low_bit_weights(2, "aciq"),
                       activations=TensorSpec(bits=4, observer="aciq"), options=ACIQ_FULL,
                       description="W2A4, Banner et al.: ACIQ clipping + per-channel bit allocation + bias correction"))
register_recipe(Recipe("w1a8-xnor", "static", weights=low_bit_weights(1), activations=A8,
                       options=(("weight_method", "xnor"),) + FIRST_LAST_8,
                       description="binary weights alpha_c*sign(W) (XNOR-Net), int8 activations; first/last layers 8-bit"))
register_recipe(Recipe("w1a1-xnor", "static", weights=low_bit_weights(1), activations=TensorSpec(bits=1, observer="aciq"),
                       options=(("weight_method", "xnor"),) + FIRST_LAST_8,
                       description="binary weights and binary activations, XNOR-popcount GEMMs; first/last layers 8-bit"))
register_recipe(Recipe("w2a8-ternary", "static", weights=low_bit_weights(2), activations=A8,
                       options=(("weight_method", "ternary"),) + FIRST_LAST_8,
                       description="ternary weights {-a, 0, a} (TWN thresholds), int8 activations; first/last layers 8-bit"))


def get_recipe(recipe: "str | Recipe") -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]
    raise RecipeError(f"unknown recipe {recipe!r}; available: {', '.join(RECIPES)} (or pass an edgequant.Recipe)")
