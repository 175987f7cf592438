"""Lowering of add, cat, clamp, global mean, and data movement (pools, reshape, pad).

Integer add/cat/mean requantize each input onto the output grid (TFLite's ADD/CONCATENATION/MEAN);
clamp becomes integer bounds on its input's grid; pools, reshape and pad keep their input's qparams.
"""
from __future__ import annotations

import numpy as np

from ..ir import Node
from ..kernels.elementwise import add_multipliers
from ..program import TensorInfo
from ..qmath import QParams
from ..wide import ADD_LEFT_SHIFT_16, dtype_name, is_wide
from .core import FLOAT, STATIC, Lowering, act_int_bounds, f_simple, pass_through, register, requant_arrays


@register(STATIC, "add")
def _s_add(L: Lowering, node: Node) -> None:
    a, b = L.src(node, 0), L.src(node, 1)
    qy = L.act_qp[node.name]
    wide_any = any(is_wide(q) for q in (L.qp(a), L.qp(b), qy))  # TFLite int16 Add: left shift 15
    attrs = {**add_multipliers(float(L.qp(a).scale), float(L.qp(b).scale), float(qy.scale),
                               ADD_LEFT_SHIFT_16 if wide_any else 20),
             **act_int_bounds(node.attrs.get("act"), qy)}
    L.emit("add", node, [a, b], attrs, info=TensorInfo(dtype_name(qy), node.shape, qy))


def same_qp(p: QParams, q: QParams) -> bool:
    return float(p.scale) == float(q.scale) and int(p.zero_point) == int(q.zero_point) and p.qmin == q.qmin and p.qmax == q.qmax


@register(STATIC, "cat")
def _s_cat(L: Lowering, node: Node) -> None:
    ins = [L.where[i] for i in node.inputs]
    qy = L.act_qp[node.name]
    same = [same_qp(L.qp(i), qy) for i in ins]
    real = np.array([float(L.qp(i).scale) / float(qy.scale) for i in ins])
    real_f32 = np.array([np.float32(L.qp(i).scale) / np.float32(qy.scale) for i in ins], np.float32)
    L.emit("cat", node, ins, {"axis": node.attrs["axis"], "same": same}, requant_arrays(real, real_f32),
           info=TensorInfo("int8", node.shape, qy))


@register(STATIC, "clamp")
def _s_clamp(L: Lowering, node: Node) -> None:
    x = L.src(node)
    qp = L.qp(x)
    b = act_int_bounds((node.attrs["lo"], node.attrs["hi"]), qp)
    lo, hi = b.get("act_min", qp.qmin), b.get("act_max", qp.qmax)
    attrs = {"lo": lo, "hi": hi, "lo_real": float(qp.scale) * (lo - int(qp.zero_point)),
             "hi_real": float(qp.scale) * (hi - int(qp.zero_point))}
    L.emit("clamp", node, [x], attrs, info=TensorInfo("int8", node.shape, qp))


@register(STATIC, "mean")
def _s_mean(L: Lowering, node: Node) -> None:
    x = L.src(node)
    qx, qy = L.qp(x), L.act_qp[node.name]
    n = int(np.prod(L.tensors[x].shape[2:]))
    real = float(np.float32(qx.scale)) / (n * float(np.float32(qy.scale)))
    real_f32 = np.float32(qx.scale) / (np.float32(n) * np.float32(qy.scale))
    L.emit("mean", node, [x], dict(node.attrs), requant_arrays(np.array([real]), np.array([real_f32])),
           info=TensorInfo(dtype_name(qy), node.shape, qy))


STATIC.update({"maxpool": pass_through("maxpool"), "avgpool": pass_through("avgpool"),
               "reshape": pass_through("reshape"), "pad": pass_through("pad")})
FLOAT.update({"add": f_simple("add_f"), "cat": f_simple("cat_f"), "clamp": f_simple("clamp"),
              "maxpool": pass_through("maxpool"), "avgpool": pass_through("avgpool_f"),
              "reshape": pass_through("reshape"), "pad": pass_through("pad"), "mean": f_simple("mean_f")})
