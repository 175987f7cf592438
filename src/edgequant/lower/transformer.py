"""Lowering of the transformer ops (matmul of activations, softmax, layernorm, transpose).

Registered into ``lower.core``'s STATIC/FLOAT tables. Integer arithmetic is
documented in ``kernels.transformer``; this module computes the constants it needs once:
requantization multipliers, the softmax exp tables, quantized gamma/beta.
"""
from __future__ import annotations

import numpy as np

from .. import qmath
from ..calibrate import activation_spec_for
from ..ir import Node
from ..kernels.transformer import LN_FRAC_BITS, LN_SQRT_FRAC_BITS, LN_WIDE_FRAC_BITS, ort_softmax_table, softmax_exp_table
from ..program import TensorInfo
from ..wide import dtype_name, is_wide
from ..qmath import QParams
from .core import FLOAT, STATIC, Lowering, f_simple, int_input, pass_through, requant_arrays


def matmul_scale_f32(s_a: float, alpha: float) -> np.float32:
    """float32 ``s_a * alpha``: the scale of the DequantizeLinear the exporter puts on input a
    (ONNX Runtime's QLinearMatMul then multiplies by ``s_a' * s_b / s_y`` in float32)."""
    return np.float32(float(np.float32(s_a)) * float(alpha))


def _s_matmul(L: Lowering, node: Node) -> None:
    """A 16-bit input (act16="all") makes the accumulator int64 (``acc64``, as in linear)."""
    a, b = int_input(L, node, 0, wide_ok=True), int_input(L, node, 1, wide_ok=True)
    qa, qb, qy = L.qp(a), L.qp(b), L.act_qp[node.name]
    alpha = float(node.attrs.get("alpha", 1.0))
    real = alpha * float(np.float32(qa.scale)) * float(np.float32(qb.scale)) / float(np.float32(qy.scale))
    real_f32 = np.float32(matmul_scale_f32(qa.scale, alpha) * np.float32(qb.scale)) / np.float32(qy.scale)
    attrs = {"alpha": alpha, **({"acc64": True} if is_wide(qa) or is_wide(qb) else {})}
    L.emit("matmul", node, [a, b], attrs, requant_arrays(np.array([real]), np.array([real_f32], np.float32)),
           info=TensorInfo(dtype_name(qy), node.shape, qy))


def softmax_qparams(bits: int) -> QParams:
    """Fixed output grid of softmax (TFLite's int8 convention): scale 1/2^bits, zero point qmin,
    so probabilities [0, 1) use the whole signed range (1/256 and -128 at 8 bits)."""
    lo, _ = qmath.qrange(bits, True, False)
    return QParams(np.float32(1.0 / (1 << bits)), np.int32(lo), bits, True, False)


def lower_softmax(L: Lowering, node: Node) -> None:
    """Input int8 or int16 (one exp-table entry per input code); output on the recipe's grid, or on
    the 16-bit grid 2^-16 when act16 widened it (``act_qp`` then holds ``softmax_qparams(16)``)."""
    x = int_input(L, node, wide_ok=True)
    qx = L.qp(x)
    bits, _ = activation_spec_for(node, L.recipe)
    qy = L.act_qp.get(node.name) if is_wide(L.act_qp.get(node.name)) else softmax_qparams(bits)
    d = int(node.shape[-1])
    arrays = {"exp_table": softmax_exp_table(float(qx.scale), int(qx.qmax) - int(qx.qmin) + 1)}
    if not (is_wide(qx) or is_wide(qy)):  # ONNX Runtime's QLinearSoftmax is 8-bit only
        arrays["table_ort"] = ort_softmax_table(float(qx.scale), d)
    L.emit("softmax", node, [x], {"axis": -1, "out_levels": 1 << qy.bits}, arrays,
           info=TensorInfo(dtype_name(qy), node.shape, qy))


def _s_layernorm(L: Lowering, node: Node) -> None:
    """gamma as int8 per channel (scale |g|/127: exact up to the multiplier), beta as int32 on the
    accumulator grid ``g_scale * 2^-12``; the scale is raised where needed so |beta_q| <= 2^30."""
    x = int_input(L, node, wide_ok=True)
    qx, qy = L.qp(x), L.act_qp[node.name]
    g = node.params["weight"].astype(np.float64)
    beta = node.params["bias"].astype(np.float64)
    d = int(node.shape[-1])
    eps = float(node.attrs["eps"])
    wide = is_wide(qy)  # int16 output: a Q16 normalised value, int64 beta and accumulator
    frac = LN_WIDE_FRAC_BITS if wide else LN_FRAC_BITS
    step = 2.0 ** -frac
    beta_lim = 2.0 ** (40 if wide else 30)
    g_scale = np.maximum.reduce([np.abs(g) / 127.0, np.abs(beta) / (step * beta_lim), np.full_like(g, 1e-30)])
    g_scale = g_scale.astype(np.float32).astype(np.float64)
    gamma_q = np.clip(np.round(g / g_scale), -127, 127).astype(np.int8)
    beta_q = np.clip(np.round(beta / (g_scale * step)), -beta_lim, beta_lim).astype(np.int64 if wide else np.int32)
    real = g_scale * step / float(np.float32(qy.scale))
    s_x = float(np.float32(qx.scale))
    eps_fixed = int(round(d * d * eps / (s_x * s_x) * 2.0 ** (2 * LN_SQRT_FRAC_BITS)))
    arrays = {"gamma": gamma_q, "bias": beta_q, "g_scale": g_scale.astype(np.float32),
              "gamma_f": node.params["weight"].astype(np.float32), "beta_f": node.params["bias"].astype(np.float32),
              **requant_arrays(real, real.astype(np.float32))}
    attrs = {"eps": eps, "eps_fixed": eps_fixed, **({"frac_bits": frac, "acc64": True} if wide else {})}
    L.emit("layernorm", node, [x], attrs, arrays, info=TensorInfo(dtype_name(qy), node.shape, qy))


def _f_layernorm(L: Lowering, node: Node) -> None:
    L.emit("layernorm_f", node, [L.src(node)], {"eps": float(node.attrs["eps"])},
           {"gamma_f": node.params["weight"].astype(np.float32), "beta_f": node.params["bias"].astype(np.float32)},
           info=TensorInfo("float32", node.shape))


STATIC.update({"matmul": _s_matmul, "softmax": lower_softmax, "layernorm": _s_layernorm,
               "transpose": pass_through("transpose")})
FLOAT.update({"matmul": f_simple("matmul_f"), "softmax": f_simple("softmax_f"), "layernorm": _f_layernorm,
              "transpose": pass_through("transpose")})
