"""Lowering of element-wise functions (``unary`` -> ``lut``) and of activation products (``mul``).

Registered into ``lower.core``'s STATIC/FLOAT tables. Output qparams come from calibration of the
op's output (``calibrate.OBSERVED_OPS``), like every other activation.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ..ir import Node
from ..kernels.lut import build_table
from ..program import TensorInfo
from ..wide import dtype_name
from .core import FLOAT, STATIC, Lowering, f_simple, requant_arrays


def _s_unary(L: Lowering, node: Node) -> None:
    x = L.src(node)
    info = L.tensors[x]
    if info.dtype not in ("int8", "int16") or info.qparams is None:
        raise UnsupportedOpError(f"{node.describe()}: {node.attrs['fn']} on a {info.dtype} tensor in an integer program")
    qx, qy = info.qparams, L.act_qp[node.name]
    fn = node.attrs["fn"]
    arrays = {"table": build_table(fn, node.attrs, qx, qy, "gemmlowp"),
              "table_ort": build_table(fn, node.attrs, qx, qy, "onnxruntime")}
    L.emit("lut", node, [x], {**node.attrs, "in_qmin": int(qx.qmin)}, arrays, info=TensorInfo(dtype_name(qy), node.shape, qy))


def _s_mul(L: Lowering, node: Node) -> None:
    a, b = L.src(node, 0), L.src(node, 1)
    qa, qb, qy = L.qp(a), L.qp(b), L.act_qp[node.name]
    real = float(np.float32(qa.scale)) * float(np.float32(qb.scale)) / float(np.float32(qy.scale))
    real_f32 = np.float32(qa.scale) * np.float32(qb.scale) / np.float32(qy.scale)
    L.emit("mul", node, [a, b], {}, requant_arrays(np.array([real]), np.array([real_f32], np.float32)),
           info=TensorInfo("int8", node.shape, qy))


STATIC.update({"unary": _s_unary, "mul": _s_mul})
FLOAT.update({"unary": f_simple("unary_f"), "mul": f_simple("mul_f")})
