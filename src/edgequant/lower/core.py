"""The lowering state and the two op tables every ``lower`` module registers into.

``STATIC[op]`` lowers a graph node into integer-only instructions, ``FLOAT[op]`` into the float
regions of fp32/fp16/dynamic recipes. Each op module (``gemm``, ``basic``, ``elementwise``, ...)
imports only this module and registers its functions with ``register``; the package ``__init__``
imports the op modules, so this module never imports them back.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import qmath
from ..errors import UnsupportedOpError
from ..ir import Graph, Node
from ..program import Instr, TensorInfo
from ..qmath import QParams
from ..recipes import Recipe
from ..wide import INT16_INPUT_OPS


# integer instructions that requantize into their output (gemmlowp M0/shift); a sub-8-bit
# output gets ``attrs["rounding"] = "single"`` (qmath.requant_rounding)
REQUANT_OPS = frozenset({"conv", "linear", "conv_xnor", "linear_xnor", "add", "cat", "mean", "mul", "matmul", "layernorm"})


class Lowering:
    """What lowering has emitted so far: instructions, tensor infos, and where each graph node's value lives."""

    def __init__(self, graph: Graph, recipe: Recipe, act_qp: dict[str, QParams]) -> None:
        self.g = graph
        self.recipe = recipe
        self.act_qp = act_qp
        self.instrs: list[Instr] = []
        self.tensors: dict[str, TensorInfo] = {}
        self.where: dict[str, str] = {}  # graph node -> program tensor holding its value

    def emit(self, op: str, node: Node, inputs: list[str], attrs=None, arrays=None, out: str | None = None,
             info: TensorInfo | None = None) -> str:
        out = out or node.name
        attrs = dict(attrs or {})
        rounding = qmath.requant_rounding(info.qparams.bits) if op in REQUANT_OPS and info and info.qparams else None
        if rounding:  # recorded on the instruction, so saved programs keep the arithmetic they had
            attrs["rounding"] = rounding
        self.instrs.append(Instr(op, inputs, out, attrs, arrays or {}, node.name))
        if info is not None:
            self.tensors[out] = info
        self.where[node.name] = out
        return out

    def src(self, node: Node, k: int = 0) -> str:
        return self.where[node.inputs[k]]

    def qp(self, tensor: str) -> QParams:
        return self.tensors[tensor].qparams


# ---------------------------------------------------------------------------------------------
# helpers
def act_int_bounds(act, qp: QParams) -> dict:
    """Fused activation (lo, hi) in real units -> integer clamp bounds on the output grid."""
    if act is None:
        return {}
    lo, hi = act
    s, z = float(qp.scale), int(qp.zero_point)
    out = {}
    if lo != float("-inf"):
        out["act_min"] = int(np.clip(z + np.round(lo / s), qp.qmin, qp.qmax))
    if hi != float("inf"):
        out["act_max"] = int(np.clip(z + np.round(hi / s), qp.qmin, qp.qmax))
    return out


def requant_arrays(real: np.ndarray, real_f32: np.ndarray) -> dict[str, np.ndarray]:
    m0, shift = qmath.quantize_multiplier(real)
    return {"m0": np.atleast_1d(m0).astype(np.int32), "shift": np.atleast_1d(shift).astype(np.int32),
            "multiplier": np.atleast_1d(real_f32).astype(np.float32)}


def pool_extra(node: Node, in_shape: tuple[int, ...]) -> tuple[int, int]:
    """Extra bottom/right padding that ceil_mode adds, from the captured output shape."""
    a = node.attrs
    t, b, l, r = a["padding"]
    dh, dw = a.get("dilation", (1, 1))
    need_h = (node.shape[2] - 1) * a["stride"][0] + dh * (a["kernel"][0] - 1) + 1
    need_w = (node.shape[3] - 1) * a["stride"][1] + dw * (a["kernel"][1] - 1) + 1
    return max(0, need_h - (in_shape[2] + t + b)), max(0, need_w - (in_shape[3] + l + r))


Lowerer = Callable[[Lowering, Node], None]
STATIC: dict[str, Lowerer] = {}
FLOAT: dict[str, Lowerer] = {}


def register(table: dict[str, Lowerer], *ops: str) -> Callable[[Lowerer], Lowerer]:
    """``@register(STATIC, "conv", "linear")``: the decorated function lowers those ops."""
    def deco(fn: Lowerer) -> Lowerer:
        for op in ops:
            table[op] = fn
        return fn

    return deco


def pass_through(op: str) -> Lowerer:
    """Data movement that keeps its input's dtype and qparams (pools, reshape, pad, slice, ...)."""
    def f(L: Lowering, node: Node) -> None:
        x = L.src(node)
        info = L.tensors[x]
        attrs = dict(node.attrs)
        if op in ("maxpool", "avgpool", "avgpool_f"):
            attrs["extra"] = pool_extra(node, info.shape)
        if op == "pad":
            if info.dtype in ("int8", "int16") and info.qparams is not None:
                qp = info.qparams
                attrs["value"] = int(np.clip(int(qp.zero_point) + np.round(node.attrs["value"] / float(qp.scale)), qp.qmin, qp.qmax))
                attrs["value_real"] = float(qp.scale) * (attrs["value"] - int(qp.zero_point))
            else:
                attrs["value_real"] = node.attrs["value"]
        L.emit(op, node, [x], attrs, info=TensorInfo(info.dtype, node.shape, info.qparams))
    return f


def f_simple(op: str) -> Lowerer:
    """A float-region op that takes its inputs as they are and computes in float32."""
    def f(L: Lowering, node: Node) -> None:
        attrs = dict(node.attrs)
        if op == "clamp":
            attrs.update(lo_real=attrs["lo"], hi_real=attrs["hi"])
        L.emit(op, node, [L.where[i] for i in node.inputs], attrs, info=TensorInfo("float32", node.shape))
    return f


def int_input(L: Lowering, node: Node, k: int = 0, wide_ok: bool = False) -> str:
    """Input ``k`` of ``node``, which must be an int8 tensor with qparams (an integer-region op);
    ``wide_ok``: the op also has an int16 kernel (``edgequant.wide``)."""
    x = L.src(node, k)
    info = L.tensors[x]
    if info.dtype == "int16" and info.qparams is not None and not wide_ok:
        raise UnsupportedOpError(f"{node.describe()}: {node.op} has no kernel for the 16-bit tensor {x!r}; keep the "
                                 f"tensors feeding {node.op} at 8 bits (recipe option act16)")
    if info.dtype not in ("int8", "int16") or info.qparams is None:
        raise UnsupportedOpError(f"{node.describe()}: {node.op} on a {info.dtype} tensor in an integer program")
    return x


def check_wide_inputs(L: Lowering, node: Node) -> None:
    """A 16-bit input to an op without an int16 kernel is refused, naming the tensor."""
    for i in node.inputs:
        t = L.where.get(i)
        if t is not None and L.tensors[t].dtype == "int16" and node.op not in WIDE_OPS:
            raise UnsupportedOpError(f"{node.describe()}: {node.op} has no kernel for the 16-bit tensor {t!r}; keep "
                                     f"the tensors feeding {node.op} at 8 bits (16-bit inputs: {', '.join(sorted(WIDE_OPS))})")


WIDE_OPS = INT16_INPUT_OPS


