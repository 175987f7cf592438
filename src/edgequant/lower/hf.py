"""Lowering of the ops that read integer inputs (``embedding``, masked ``softmax``, ``maskmul``,
``reduce``); kernels and their arithmetic in ``kernels.masked``.

Registered into ``lower.core``'s STATIC/FLOAT tables.
"""
from __future__ import annotations

import numpy as np

from .. import qmath
from ..calibrate import activation_spec_for
from ..errors import UnsupportedOpError
from ..ir import Node
from ..program import TensorInfo
from ..wide import container_dtype, dtype_name, is_wide
from .core import FLOAT, STATIC, Lowering, f_simple, int_input, requant_arrays
from .transformer import lower_softmax


def _mask_input(L: Lowering, node: Node, k: int = 1) -> str:
    m = L.src(node, k)
    if L.tensors[m].dtype != "int64":
        raise UnsupportedOpError(f"{node.describe()}: its mask {m!r} is not an integer (N, L) padding-mask input")
    return m


def embedding_qparams(weight: np.ndarray, bits: int, symmetric: bool) -> qmath.QParams:
    """The table's own range: every token (not only those seen in calibration) is representable."""
    return qmath.compute_qparams(float(weight.min()), float(weight.max()), bits, True, symmetric)


def _s_embedding(L: Lowering, node: Node) -> None:
    """int8 table on the output grid; int16 where act16 widened the output (``act_qp`` holds it)."""
    ids = L.src(node)
    w = node.params["weight"].astype(np.float64)
    bits, spec = activation_spec_for(node, L.recipe)
    wide = L.act_qp.get(node.name)
    qp = wide if is_wide(wide) else embedding_qparams(w, bits, spec["symmetric"])
    table = np.clip(np.round(w / float(qp.scale)) + int(qp.zero_point), qp.qmin, qp.qmax).astype(container_dtype(qp.bits))
    L.emit("embedding", node, [ids], {}, {"table": table}, info=TensorInfo(dtype_name(qp), node.shape, qp))


def _f_embedding(L: Lowering, node: Node) -> None:
    dt = np.float16 if L.recipe.mode == "fp16" else np.float32
    L.emit("embedding_f", node, [L.src(node)], {}, {"weight": node.params["weight"].astype(dt)},
           info=TensorInfo("float32", node.shape))


def lower_softmax_any(L: Lowering, node: Node) -> None:
    if len(node.inputs) == 1:
        return lower_softmax(L, node)
    mask = _mask_input(L, node)
    lower_softmax(L, node)
    ins = L.instrs[-1]
    ins.op = "softmax_masked"
    ins.inputs.append(mask)
    ins.attrs["mask_view"] = tuple(node.attrs["mask_view"])


def _f_softmax_any(L: Lowering, node: Node) -> None:
    op = "softmax_f" if len(node.inputs) == 1 else "softmax_masked_f"
    L.emit(op, node, [L.where[i] for i in node.inputs], dict(node.attrs), info=TensorInfo("float32", node.shape))


def _s_maskmul(L: Lowering, node: Node) -> None:
    x, mask = int_input(L, node), _mask_input(L, node)
    L.emit("maskmul", node, [x, mask], {"mask_view": tuple(node.attrs["mask_view"])},
           info=TensorInfo("int8", node.shape, L.qp(x)))


def _f_maskmul(L: Lowering, node: Node) -> None:
    L.emit("maskmul", node, [L.src(node), _mask_input(L, node)], {"mask_view": tuple(node.attrs["mask_view"])},
           info=TensorInfo("float32", node.shape))


def _s_reduce(L: Lowering, node: Node) -> None:
    x = int_input(L, node, wide_ok=True)  # int16 in: sums stay far inside int64 (masked divide)
    qx, qy = L.qp(x), L.act_qp[node.name]
    a = node.attrs
    ins = [x]
    n = 1
    if len(node.inputs) > 1:
        if a["kind"] != "mean":
            raise UnsupportedOpError(f"{node.describe()}: masked {a['kind']}; edgequant runs the masked mean")
        ins.append(_mask_input(L, node))  # the kernel divides by the kept count
    elif a["kind"] == "mean":
        n = int(np.prod([L.tensors[x].shape[d] for d in a["dims"]]))
    real = float(np.float32(qx.scale)) / (n * float(np.float32(qy.scale)))
    real_f32 = np.float32(qx.scale) / (np.float32(n) * np.float32(qy.scale))
    L.emit("reduce", node, ins, dict(a), requant_arrays(np.array([real]), np.array([real_f32], np.float32)),
           info=TensorInfo(dtype_name(qy), node.shape, qy))


STATIC.update({"embedding": _s_embedding, "softmax": lower_softmax_any, "maskmul": _s_maskmul, "reduce": _s_reduce})
FLOAT.update({"embedding": _f_embedding, "softmax": _f_softmax_any, "maskmul": _f_maskmul, "reduce": f_simple("reduce_f")})
