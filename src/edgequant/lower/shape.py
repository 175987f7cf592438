"""Lowering of data movement (``slice``, ``upsample``) and constants (``const``).

Registered into ``lower.core``'s STATIC/FLOAT tables. ``slice`` and
``upsample`` keep their input's qparams (pure data movement / TFLite's same-scale resize);
a ``const`` gets 8-bit per-tensor qparams of its own range (min/max with zero, nothing clipped):
it is a parameter, known exactly, not an activation to calibrate.
"""
from __future__ import annotations

import numpy as np

from ..ir import Node
from ..program import TensorInfo
from ..qmath import compute_qparams, quantize
from .core import FLOAT, STATIC, Lowering, pass_through

CONST_BITS = 8


def const_qparams(value: np.ndarray):
    return compute_qparams(float(value.min()), float(value.max()), CONST_BITS, signed=True)


def _s_const(L: Lowering, node: Node) -> None:
    v = node.params["value"]
    qp = const_qparams(v)
    q = quantize(v.astype(np.float32), qp).astype(np.int8)
    L.emit("const", node, [], {}, {"value": q}, info=TensorInfo("int8", tuple(v.shape), qp))


def _f_const(L: Lowering, node: Node) -> None:
    v = node.params["value"].astype(np.float32)
    L.emit("const_f", node, [], {}, {"value": v}, info=TensorInfo("float32", tuple(v.shape)))


STATIC.update({"slice": pass_through("slice"), "upsample": pass_through("upsample"), "const": _s_const})
FLOAT.update({"slice": pass_through("slice"), "upsample": pass_through("upsample"), "const": _f_const})
