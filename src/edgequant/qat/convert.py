"""``convert``: a trained QAT module -> the same ``QuantizedModel`` that ``eq.quantize`` returns.

Activation qparams are the quantizers' learned grids; weights are the BN-folded, fake-quantized
weights with their learned step per output channel, lowered by the ``"qat"`` weight method so the
integer weights are exactly the integers the module trained with.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..api import float_param_bytes
from ..errors import RecipeError
from ..ir import Node
from ..lower import lower
from ..qmath import qrange
from ..quantized import QuantizedModel
from ..recipes import Recipe
from ..weight_quant import register_weight_method
from .modules import QATModel


@register_weight_method("qat")
def learned_weights(node: Node, recipe: Recipe, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer weights on the step learned in QAT (``attrs["weight_scale"]``, one per output channel)."""
    if "weight_scale" not in node.attrs:
        raise RecipeError(f"{node.describe()}: weight_method 'qat' needs the learned step of a QAT model; "
                          "produce the program with edgequant.qat.convert(qat_model)")
    w = node.params["weight"].astype(np.float64)
    scale = np.asarray(node.attrs["weight_scale"], np.float32)
    if scale.shape != (w.shape[0],):
        raise RecipeError(f"{node.describe()}: {scale.size} learned weight steps for {w.shape[0]} output channels")
    qmin, qmax = qrange(bits, True, True)
    q = np.clip(np.rint(w / scale.astype(np.float64).reshape((-1,) + (1,) * (w.ndim - 1))), qmin, qmax)
    return q.astype(np.int8), scale


def convert(qat_model: QATModel) -> QuantizedModel:
    """Lower a (trained) ``QATModel`` to the integer program. The module itself is not changed."""
    if not isinstance(qat_model, QATModel):
        raise RecipeError(f"convert expects the module returned by edgequant.qat.prepare; got {type(qat_model).__name__}")
    graph = qat_model.export_graph()
    act_qp = qat_model.activation_qparams()
    opts = tuple((k, v) for k, v in qat_model.recipe.options if k != "weight_method") + (("weight_method", "qat"),)
    recipe = dataclasses.replace(qat_model.recipe, options=opts)
    program = lower(graph, recipe, act_qp)
    program.meta["qat"] = dataclasses.asdict(qat_model.config)
    return QuantizedModel(program, recipe, graph, float_param_bytes(graph))
