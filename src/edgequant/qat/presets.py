"""Named QAT recipes: the widths of the PTQ recipes plus how QAT learns ranges (recipe options
``qat_act``/``qat_weight``/``freeze_bn_step``), so a name reproduces the whole setup.

``eq.quantize`` on one of these runs plain post-training quantization at the same widths; the
option ``("training", "qat")`` tells tools (the sweep) that it is meant for ``eq.qat``.
"""
from __future__ import annotations

from ..recipes import Recipe, TensorSpec, register_recipe


def _w(bits: int) -> TensorSpec:
    return TensorSpec(bits=bits, symmetric=True, narrow=True, per_channel=True)


_LSQ = (("training", "qat"), ("qat_act", "lsq"), ("qat_weight", "lsq"), ("freeze_bn_step", 0))

W4A4_QAT = register_recipe(Recipe(
    "w4a4-qat", "static", weights=_w(4), activations=TensorSpec(bits=4), options=_LSQ,
    description="QAT: 4-bit per-channel weights, 4-bit activations, LSQ-learned steps"))
W2A2_QAT = register_recipe(Recipe(
    "w2a2-qat", "static", weights=_w(2), activations=TensorSpec(bits=2), options=_LSQ,
    description="QAT: ternary (2-bit narrow) per-channel weights, 2-bit activations, LSQ-learned steps"))
W1A1_XNOR_QAT = register_recipe(Recipe(
    "w1a1-xnor-qat", "static", weights=_w(1), activations=TensorSpec(bits=1, observer="aciq"),
    options=(("training", "qat"), ("qat_act", "lsq"), ("qat_weight", "lsq"), ("freeze_bn_step", 0),
             ("weight_method", "xnor"), ("first_last_bits", 8)),
    description="QAT: binary weights alpha_c*sign(W) and binary activations (XNOR-popcount GEMMs), first/last layers 8-bit"))
