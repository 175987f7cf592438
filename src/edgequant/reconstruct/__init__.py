"""Reconstruction-based PTQ below 8 bits: AdaRound (per layer), BRECQ (per block), QDrop, and GPTQ
(per layer, one pass, no training loop: ``w4a8-gptq``, ``w4a4-gptq``).

    import edgequant as eq
    q = eq.quantize(model, "w4a4-brecq", calib)                       # recipe default budget
    q = eq.reconstruct.quantize(model, "w4a4-brecq", calib, iterations=2000, progress=True)

The learned integers replace the weight method's nearest-rounded ones in the same integer program
(``weight_method="learned_rounding"``) on the weight method's scales; BRECQ also learns the
activation steps inside each block (LSQ, zero points kept) and the program is lowered with them.
Cost: every unit trains for ``iterations`` steps of ``batch_size`` (32) samples drawn from the
cached calibration tensors, through that unit only (AdaRound: through one layer, whose input and
float target are cached once per layer in float16, on disk beyond ``memory_mb``), on all cores;
so time grows linearly with depth x iterations x the unit's cost per sample. GPTQ has no steps:
one pass over the calibration samples per layer plus a Cholesky per layer. Defaults: 1000 steps
per BRECQ unit, 300 per AdaRound layer; on a 2-core x86 box (load 1-3, one torch thread)
mobilenet_v2_digits (9 units, 23 layers) took 71-84 s per BRECQ recipe, 110-125 s with QDrop (its
random masks), 25-53 s for AdaRound, and digits_cnn 4-16 s (``bench/ptq_reconstruct.py``); an ImageNet-size MobileNetV2 has ~20 units of ~100x the cost per
sample, so without limits plan hours. Two limits make it minutes (``window.py``, ``ReconConfig``): each step
trains on a random spatial window of at most ``window`` (784 = 28x28) output positions per sample
(exact crop with the receptive-field halo, unbiased loss; maps no larger train whole), and each
layer / unit stops after ``cpu_budget`` CPU-seconds of training (``DEFAULT_CPU_BUDGET``: 15 per
AdaRound layer, 100 per BRECQ unit; the step count is fixed after timing the first 5 steps, never
below 50, and the beta / learning-rate schedules run over that count); the steps each layer / unit
got are in ``program.meta["reconstruct"]`` (``iterations``, ``layer_iterations``). Below ~500 steps per unit 2-bit weights do not
converge (mobilenet_v2_digits W2A4: 23% agreement with fp32 at 200 steps, 94% at 1000).
"""
from __future__ import annotations

import dataclasses

from ..api import PTQ_STEPS
from ..recipes import LayerOverride, Recipe, TensorSpec, register_recipe
from .adaround import AdaRoundWeight, BetaSchedule, rectified_sigmoid
from .blocks import Unit, cut_points, find_units
from .brecq import ReconConfig, ReconResult, WeightGrid, reconstruct_graph
from .gptq import gptq
from .pipeline import LEARNED, METHODS, config_from_recipe, learned_weights, quantize, reconstruct_step, weight_grid, with_options

if reconstruct_step not in PTQ_STEPS:
    PTQ_STEPS.append(reconstruct_step)

DEFAULT_ITERATIONS = {"adaround": 300, "brecq": 1000}  # see the module docstring for their cost
# CPU-seconds of training per AdaRound layer / BRECQ unit: binds only where a step is costly (an
# ImageNet-size net: EfficientNet-Lite1 has 65 layers, 21 units; targets 10 / 20 min on 2 cores);
# the digits-size nets finish their steps far inside it, so they train exactly as before.
DEFAULT_CPU_BUDGET = {"adaround": 15.0, "brecq": 100.0}


def make_recipe(weight_bits: int, act_bits: int, method: str = "brecq", qdrop: float = 0.0, name: str | None = None,
                iterations: int | None = None, base: str = "observer", overrides: tuple[LayerOverride, ...] = (),
                **options) -> Recipe:
    """A static recipe that reconstructs at W``weight_bits``A``act_bits`` (per-channel symmetric
    weights, MSE-searched weight and activation clips as the starting grid)."""
    label = method + ("-qdrop" if qdrop and method == "brecq" else "")
    budget = {} if method == "gptq" else {"iterations": iterations or DEFAULT_ITERATIONS[method],  # GPTQ: one pass
                                          "cpu_budget": DEFAULT_CPU_BUDGET[method]}
    opts = {"reconstruct": method, "weight_method": LEARNED, "reconstruct_base": base,
            **budget, **({"qdrop": qdrop} if qdrop else {}), **options}
    return Recipe(
        name or f"w{weight_bits}a{act_bits}-{label}", "static",
        weights=TensorSpec(weight_bits, symmetric=True, narrow=True, per_channel=True, observer="mse"),
        activations=TensorSpec(act_bits, observer="mse"), overrides=tuple(overrides), options=tuple(opts.items()),
        description=f"{label} {'Hessian-compensated' if method == 'gptq' else 'learned'} weight rounding at "
                    f"W{weight_bits}A{act_bits} (arXiv "
                    + {"adaround": "2004.10568", "brecq": "2102.05426", "gptq": "2210.17323"}[method] + (", QDrop 2203.05740" if qdrop else "") + ")")


for _wb, _ab, _m, _p in ((4, 8, "adaround", 0.0), (4, 4, "brecq", 0.0), (2, 4, "brecq", 0.0),
                         (4, 4, "brecq", 0.5), (2, 4, "brecq", 0.5), (4, 8, "gptq", 0.0), (4, 4, "gptq", 0.0)):
    register_recipe(make_recipe(_wb, _ab, _m, _p))
register_recipe(dataclasses.replace(
    make_recipe(4, 8, "gptq", name="w4a8-gptq-keep8", depthwise_bits=8, first_last_bits=8),
    description="GPTQ at W4A8 with depthwise and first/last layers kept at 8 bits (arXiv 2210.17323)"))

# Transformers: GPTQ 4-bit weights (one fake-quantized pass, gptq_graph.py) with every activation
# that has an int16 kernel in 16 bits (act16="all", as the transformer default w8a16); min/max
# activation ranges (an MSE clip would cut the residual stream's outlier channels)
for _wb in (4, 8):
    register_recipe(dataclasses.replace(
        make_recipe(_wb, 8, "gptq", name=f"w{_wb}a16-gptq", act16="all"), activations=TensorSpec(8),
        description=f"GPTQ {_wb}-bit per-channel weights, int16 activations wherever an int16 kernel exists "
                    "(transformers; arXiv 2210.17323)"))

# Group-wise 4-bit scales (lowbit/groups.py: a scale per group of input columns as channel scale x
# 8-bit integer multiplier, still one integer GEMM per layer), GPTQ with act-order on that grid. On
# all-MiniLM-L6-v2 (64/64 sentences; bench/RESULTS.md, issue 16) mean cosine per channel 0.9802,
# 128 columns 0.9842, 64 0.9872, 32 0.9893, 16 0.9911: w4a16-g16-gptq is the W4 recipe that meets
# 0.99 (4 + 8/16 = 4.5 stored bits per weight); g128 is the common size (4.06 bits)
for _g, _ab in ((128, 16), (16, 16), (128, 8)):
    register_recipe(dataclasses.replace(
        make_recipe(4, 8, "gptq", name=f"w4a{_ab}-g{_g}-gptq", weight_group=_g, act_order=True,
                    **({"act16": "all"} if _ab == 16 else {})),
        activations=TensorSpec(8),
        description=f"GPTQ (act-order) 4-bit weights with a scale per {_g} input columns (channel scale x 8-bit "
                    "group multiplier, integer-only), "
                    + ("int16 activations wherever an int16 kernel exists" if _ab == 16 else "int8 activations")
                    + " (transformers; arXiv 2210.17323)"))

# W4 weights with int8 activations quantized per token at run time (dynamic; the W4A8 of LLM
# quantizers): GPTQ's Hessians from the float inputs. all-MiniLM-L6-v2: see bench/RESULTS.md (issue 16)
for _g in (128, 16):
    register_recipe(dataclasses.replace(
        make_recipe(4, 8, "gptq", name=f"dyn4-g{_g}-gptq", weight_group=_g, act_order=True, dynamic_scale="token"),
        mode="dynamic", activations=TensorSpec(8),
        description=f"GPTQ (act-order) 4-bit weights with a scale per {_g} input columns, int8 activations "
                    "quantized per token at run time (transformers; arXiv 2210.17323)"))

__all__ = ["AdaRoundWeight", "BetaSchedule", "rectified_sigmoid", "Unit", "cut_points", "find_units", "ReconConfig",
           "ReconResult", "WeightGrid", "reconstruct_graph", "LEARNED", "METHODS", "config_from_recipe",
           "learned_weights", "quantize", "reconstruct_step", "weight_grid", "with_options", "make_recipe",
           "DEFAULT_ITERATIONS", "DEFAULT_CPU_BUDGET", "gptq"]
