"""Named QAT recipes: the widths of the PTQ recipes plus how QAT learns ranges (recipe options
``qat_act``/``qat_weight``/``qat_weight_init``/``freeze_bn_step``) and how ``finetune`` trains
(``qat_epochs``/``qat_lr``), so a name reproduces the whole setup.

``w1a1-xnor-qat`` trains XNOR-Net layers (binary weights ``alpha_c * sign(W)``, binary activations,
clipped-identity STE) with the first and last layers at 8 bits, and converts to the program the
``w1a1-xnor`` PTQ recipe has: ``binarize`` after each binary tensor, ``conv_xnor``/``linear_xnor``.

``eq.quantize`` on one of these runs plain post-training quantization at the same widths; the
option ``("training", "qat")`` tells tools (the sweep) that it is meant for ``eq.qat``.
"""
from __future__ import annotations

from ..recipes import Recipe, TensorSpec, register_recipe


def _w(bits: int) -> TensorSpec:
    return TensorSpec(bits=bits, symmetric=True, narrow=True, per_channel=True)


_LSQ = (("training", "qat"), ("qat_act", "lsq"), ("qat_weight", "lsq"), ("freeze_bn_step", 0))


def _train(epochs: int, lr: float, **more) -> tuple:
    """``finetune`` defaults, tuned on the pretrained digits CNN and resnet_digits (bench/qat.py):
    longer runs at 4 bits overfit the 1,258 training digits and lose test accuracy. Binary nets
    train with live BatchNorm statistics and freeze them late (step 200 of 240, the whitepaper's
    schedule; frozen from the start the binarized resnet_digits reached 76% instead of 91%);
    at 2 bits live statistics hurt (80% instead of 92-95%), so W2A2 folds BN from the start."""
    return (("qat_epochs", epochs), ("qat_lr", lr)) + tuple(more.items())


W4A4_QAT = register_recipe(Recipe(
    "w4a4-qat", "static", weights=_w(4), activations=TensorSpec(bits=4),
    options=_LSQ + _train(1, 1e-4, qat_weight_init="minmax"),
    description="QAT: 4-bit per-channel weights, 4-bit activations, LSQ-learned steps (weights start on the min/max grid)"))
W2A2_QAT = register_recipe(Recipe(
    "w2a2-qat", "static", weights=_w(2), activations=TensorSpec(bits=2), options=_LSQ + _train(4, 1e-3),
    description="QAT: ternary (2-bit narrow) per-channel weights, 2-bit activations, LSQ-learned steps"))
W1A1_XNOR_QAT = register_recipe(Recipe(
    "w1a1-xnor-qat", "static", weights=_w(1), activations=TensorSpec(bits=1, observer="aciq"),
    options=_LSQ[:-1] + (("freeze_bn_step", 200), ("weight_method", "xnor"), ("first_last_bits", 8)) + _train(12, 2e-3),
    description="QAT: binary weights alpha_c*sign(W) and binary activations (XNOR-popcount GEMMs), first/last layers 8-bit"))
