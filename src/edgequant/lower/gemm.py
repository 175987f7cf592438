"""Lowering of ``conv`` and ``linear``: the TFLite int8 spec's GEMM.

Symmetric (per-channel) weights at the width the recipe gives the layer, int32 bias with scale
s_in*s_w (saturated so no runtime's accumulator overflows), requantization multiplier
M = s_in*s_w/s_out as (Q31 M0, shift) plus the float32 M that ONNX Runtime uses. Float regions:
fp32/fp16 weights, or int8 weights with run-time activation scales (dynamic).
"""
from __future__ import annotations

import numpy as np

from .. import qmath
from ..ir import Node
from ..lowbit import groups
from ..lowbit.binary_act import gemm_op
from ..lowbit.edges import node_bits
from ..program import TensorInfo
from ..weight_quant import quantize_weight_ex
from ..wide import dtype_name, is_wide
from .core import FLOAT, STATIC, Lowering, act_int_bounds, register, requant_arrays


def gemm_attrs(node: Node) -> dict:
    if node.op == "linear":
        return {}
    keys = ("stride", "padding", "dilation", "groups", "dims")
    return {k: node.attrs[k] for k in keys}


def _group_arrays(w_int: np.ndarray, w_attrs: dict) -> tuple[dict, np.ndarray]:
    """Group-wise weights (``lowbit/groups.py``): move the multipliers from the method's attrs into
    the instruction's arrays; (those arrays, the effective integer weight the GEMM multiplies)."""
    mult = w_attrs.pop(groups.ARRAY, None)
    if mult is None:
        return {}, w_int
    return {groups.ARRAY: np.asarray(mult, np.uint8)}, groups.effective_weight(w_int, mult, w_attrs[groups.ATTR])


@register(STATIC, "conv", "linear")
def _s_gemm(L: Lowering, node: Node) -> None:
    x = L.src(node)
    qx, qy = L.qp(x), L.act_qp[node.name]
    wb, _ = node_bits(L.g, L.recipe, node)  # overrides and the first/last-layer rule
    w_int, w_scale, w_attrs = quantize_weight_ex(node, L.recipe, wb)
    w_arrays, w_eff = _group_arrays(w_int, w_attrs)
    s_in = np.float32(qx.scale)
    bias_scale = (s_in * w_scale).astype(np.float32)
    wide_in = is_wide(qx)  # int16 input (TFLite 16x8): int64 accumulator and bias, no int32 bound
    # saturate so that bias + sum(x * w) never leaves int32 in any runtime (qmath.bias_limit)
    limit = float(2**47) if wide_in else qmath.bias_limit(w_eff).astype(np.float64)
    bias = np.clip(np.round(node.params["bias"].astype(np.float64) / bias_scale), -limit, limit)
    real = float(s_in) * w_scale.astype(np.float64) / float(np.float32(qy.scale))
    real_f32 = (s_in * w_scale.astype(np.float32) / np.float32(qy.scale)).astype(np.float32)
    arrays = {"weight": w_int.astype(np.int8), "bias": bias.astype(np.int64 if wide_in else np.int32), "w_scale": w_scale.astype(np.float32),
              **requant_arrays(real, real_f32), **w_arrays}
    attrs = {**gemm_attrs(node), **act_int_bounds(node.attrs.get("act"), qy), "weight_bits": wb,
             "per_channel": bool(L.recipe.weights.per_channel), **w_attrs, **({"acc64": True} if wide_in else {})}
    op = gemm_op(node.op, w_int, wb, qx)  # +-1 weights on a binary input: XNOR-popcount kernel
    L.emit(op, node, [x], attrs, arrays, info=TensorInfo(dtype_name(qy), node.shape, qy))


@register(FLOAT, "conv", "linear")
def _f_gemm(L: Lowering, node: Node) -> None:
    x = L.src(node)
    mode = L.recipe.mode
    attrs = {**gemm_attrs(node)}
    if "act" in node.attrs:
        attrs["act"] = tuple(node.attrs["act"])
    if mode == "dynamic":
        wb, _ = node_bits(L.g, L.recipe, node)
        w_int, w_scale, w_attrs = quantize_weight_ex(node, L.recipe, wb)
        w_arrays, _ = _group_arrays(w_int, w_attrs)
        arrays = {"weight": w_int.astype(np.int8), "w_scale": w_scale.astype(np.float32),
                  "bias_f": node.params["bias"].astype(np.float32), **w_arrays}
        if "in_scale" in node.params:  # SmoothQuant factors (lowbit/smooth.py): applied before the run-time quantizer
            arrays["in_scale"] = node.params["in_scale"].astype(np.float32)
        attrs["weight_bits"] = wb
        attrs.update(w_attrs)
        if node.op == "linear" and L.recipe.option("dynamic_scale", "tensor") == "token":
            attrs["dynamic_scale"] = "token"
        op = node.op + "_dyn"
    else:
        wdt = np.float16 if mode == "fp16" else np.float32
        w = node.params["weight"]
        if "in_scale" in node.params:  # a smoothed graph lowered without the quantizer: fold the factors back
            w = w * node.params["in_scale"].reshape(1, -1)
        arrays = {"weight": w.astype(wdt), "bias": node.params["bias"].astype(wdt)}
        op = node.op + "_f"
    L.emit(op, node, [x], attrs, arrays, info=TensorInfo("float32", node.shape))
