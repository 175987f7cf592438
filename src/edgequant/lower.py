"""Lower a prepared QGraph + activation qparams into a runnable Program.

One function per (mode, op) in tables, so adding an op is one entry. Integer lowering follows the
TFLite int8 spec: symmetric per-channel weights, int32 bias with scale s_in*s_w, requantization
multiplier M = s_in*s_w/s_out as (Q31 M0, shift) plus the float32 M that ONNX Runtime uses.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import qmath
from .errors import RecipeError, UnsupportedOpError
from .feeds import INT_DTYPE, is_int_input
from .ir import Graph, Node
from .kernels.elementwise import add_multipliers
from .program import Instr, Program, TensorInfo
from .qmath import QParams
from .recipes import Recipe
from .lowbit.binary_act import gemm_op, is_binary_tensor, lower_binary_output
from .lowbit.edges import node_bits
from .weight_quant import quantize_weight_ex


# integer instructions that requantize into their output (gemmlowp M0/shift); a sub-8-bit
# output gets ``attrs["rounding"] = "single"`` (qmath.requant_rounding)
REQUANT_OPS = frozenset({"conv", "linear", "conv_xnor", "linear_xnor", "add", "cat", "mean", "mul", "matmul", "layernorm"})


class _Lowering:
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


def _gemm_attrs(node: Node) -> dict:
    if node.op == "linear":
        return {}
    keys = ("stride", "padding", "dilation", "groups", "dims")
    return {k: node.attrs[k] for k in keys}


# ---------------------------------------------------------------------------------------------
# static (integer-only)
def _s_gemm(L: _Lowering, node: Node) -> None:
    x = L.src(node)
    qx, qy = L.qp(x), L.act_qp[node.name]
    wb, _ = node_bits(L.g, L.recipe, node)  # overrides and the first/last-layer rule
    w_int, w_scale, w_attrs = quantize_weight_ex(node, L.recipe, wb)
    s_in = np.float32(qx.scale)
    bias_scale = (s_in * w_scale).astype(np.float32)
    # saturate so that bias + sum(x * w) never leaves int32 in any runtime (qmath.bias_limit)
    limit = qmath.bias_limit(w_int).astype(np.float64)
    bias = np.clip(np.round(node.params["bias"].astype(np.float64) / bias_scale), -limit, limit)
    real = float(s_in) * w_scale.astype(np.float64) / float(np.float32(qy.scale))
    real_f32 = (s_in * w_scale.astype(np.float32) / np.float32(qy.scale)).astype(np.float32)
    arrays = {"weight": w_int.astype(np.int8), "bias": bias.astype(np.int32), "w_scale": w_scale.astype(np.float32),
              **requant_arrays(real, real_f32)}
    attrs = {**_gemm_attrs(node), **act_int_bounds(node.attrs.get("act"), qy), "weight_bits": wb,
             "per_channel": bool(L.recipe.weights.per_channel), **w_attrs}
    op = gemm_op(node.op, w_int, wb, qx)  # +-1 weights on a binary input: XNOR-popcount kernel
    L.emit(op, node, [x], attrs, arrays, info=TensorInfo("int8", node.shape, qy))


def _s_add(L: _Lowering, node: Node) -> None:
    a, b = L.src(node, 0), L.src(node, 1)
    qy = L.act_qp[node.name]
    attrs = {**add_multipliers(float(L.qp(a).scale), float(L.qp(b).scale), float(qy.scale)),
             **act_int_bounds(node.attrs.get("act"), qy)}
    L.emit("add", node, [a, b], attrs, info=TensorInfo("int8", node.shape, qy))


def _same_qp(p: QParams, q: QParams) -> bool:
    return float(p.scale) == float(q.scale) and int(p.zero_point) == int(q.zero_point) and p.qmin == q.qmin and p.qmax == q.qmax


def _s_cat(L: _Lowering, node: Node) -> None:
    ins = [L.where[i] for i in node.inputs]
    qy = L.act_qp[node.name]
    same = [_same_qp(L.qp(i), qy) for i in ins]
    real = np.array([float(L.qp(i).scale) / float(qy.scale) for i in ins])
    real_f32 = np.array([np.float32(L.qp(i).scale) / np.float32(qy.scale) for i in ins], np.float32)
    L.emit("cat", node, ins, {"axis": node.attrs["axis"], "same": same}, requant_arrays(real, real_f32),
           info=TensorInfo("int8", node.shape, qy))


def _s_clamp(L: _Lowering, node: Node) -> None:
    x = L.src(node)
    qp = L.qp(x)
    b = act_int_bounds((node.attrs["lo"], node.attrs["hi"]), qp)
    lo, hi = b.get("act_min", qp.qmin), b.get("act_max", qp.qmax)
    attrs = {"lo": lo, "hi": hi, "lo_real": float(qp.scale) * (lo - int(qp.zero_point)),
             "hi_real": float(qp.scale) * (hi - int(qp.zero_point))}
    L.emit("clamp", node, [x], attrs, info=TensorInfo("int8", node.shape, qp))


def _pass_through(op: str) -> Callable:
    def f(L: _Lowering, node: Node) -> None:
        x = L.src(node)
        info = L.tensors[x]
        attrs = dict(node.attrs)
        if op in ("maxpool", "avgpool", "avgpool_f"):
            attrs["extra"] = pool_extra(node, info.shape)
        if op == "pad":
            if info.dtype == "int8":
                qp = info.qparams
                attrs["value"] = int(np.clip(int(qp.zero_point) + np.round(node.attrs["value"] / float(qp.scale)), qp.qmin, qp.qmax))
                attrs["value_real"] = float(qp.scale) * (attrs["value"] - int(qp.zero_point))
            else:
                attrs["value_real"] = node.attrs["value"]
        L.emit(op, node, [x], attrs, info=TensorInfo(info.dtype, node.shape, info.qparams))
    return f


def _s_mean(L: _Lowering, node: Node) -> None:
    x = L.src(node)
    qx, qy = L.qp(x), L.act_qp[node.name]
    n = int(np.prod(L.tensors[x].shape[2:]))
    real = float(np.float32(qx.scale)) / (n * float(np.float32(qy.scale)))
    real_f32 = np.float32(qx.scale) / (np.float32(n) * np.float32(qy.scale))
    L.emit("mean", node, [x], dict(node.attrs), requant_arrays(np.array([real]), np.array([real_f32])),
           info=TensorInfo("int8", node.shape, qy))


STATIC: dict[str, Callable] = {
    "conv": _s_gemm, "linear": _s_gemm, "add": _s_add, "cat": _s_cat, "clamp": _s_clamp,
    "maxpool": _pass_through("maxpool"), "avgpool": _pass_through("avgpool"), "reshape": _pass_through("reshape"),
    "pad": _pass_through("pad"), "mean": _s_mean,
}


# ---------------------------------------------------------------------------------------------
# float regions: fp32, fp16 (weights in half) and dynamic (int8 GEMMs, float elsewhere)
def _f_gemm(L: _Lowering, node: Node) -> None:
    x = L.src(node)
    mode = L.recipe.mode
    attrs = {**_gemm_attrs(node)}
    if "act" in node.attrs:
        attrs["act"] = tuple(node.attrs["act"])
    if mode == "dynamic":
        wb, _ = node_bits(L.g, L.recipe, node)
        w_int, w_scale, w_attrs = quantize_weight_ex(node, L.recipe, wb)
        arrays = {"weight": w_int.astype(np.int8), "w_scale": w_scale.astype(np.float32),
                  "bias_f": node.params["bias"].astype(np.float32)}
        attrs["weight_bits"] = wb
        attrs.update(w_attrs)
        op = node.op + "_dyn"
    else:
        wdt = np.float16 if mode == "fp16" else np.float32
        arrays = {"weight": node.params["weight"].astype(wdt), "bias": node.params["bias"].astype(wdt)}
        op = node.op + "_f"
    L.emit(op, node, [x], attrs, arrays, info=TensorInfo("float32", node.shape))


def _f_simple(op: str) -> Callable:
    def f(L: _Lowering, node: Node) -> None:
        attrs = dict(node.attrs)
        if op == "clamp":
            attrs.update(lo_real=attrs["lo"], hi_real=attrs["hi"])
        L.emit(op, node, [L.where[i] for i in node.inputs], attrs, info=TensorInfo("float32", node.shape))
    return f


FLOAT: dict[str, Callable] = {
    "conv": _f_gemm, "linear": _f_gemm, "add": _f_simple("add_f"), "cat": _f_simple("cat_f"),
    "clamp": _f_simple("clamp"), "maxpool": _pass_through("maxpool"), "avgpool": _pass_through("avgpool_f"),
    "reshape": _pass_through("reshape"), "pad": _pass_through("pad"), "mean": _f_simple("mean_f"),
}


def lower(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None = None) -> Program:
    """Prepared graph (BN folded, activations fused) -> Program for ``recipe``."""
    L = _Lowering(graph, recipe, act_qp or {})
    table = STATIC if recipe.mode == "static" else FLOAT
    for name in graph.inputs:
        inp = graph.node(name)
        L.where[inp.name] = inp.name
        if is_int_input(inp.attrs):  # token ids / padding masks: int64 in, never quantized
            L.tensors[inp.name] = TensorInfo(INT_DTYPE, inp.shape)
            continue
        L.tensors[inp.name] = TensorInfo("float32", inp.shape)
        if recipe.mode == "static":
            if inp.name not in L.act_qp:
                raise RecipeError("static recipes need calibrated activation qparams")

            def _quantize_input(L: _Lowering, n: Node) -> None:
                L.emit("quantize", n, [n.name], out=n.name + ".q", info=TensorInfo("int8", n.shape, L.act_qp[n.name]))

            if is_binary_tensor(L.act_qp[inp.name]):
                lower_binary_output(L, inp, _quantize_input)
            else:
                _quantize_input(L, inp)
    for node in graph.nodes:
        if node.op == "input":
            continue
        if node.op not in table:
            raise UnsupportedOpError(f"{node.describe()}: no {recipe.mode} lowering for op {node.op!r} (run passes.prepare first)")
        if recipe.mode == "static" and is_binary_tensor(L.act_qp.get(node.name)):
            lower_binary_output(L, node, table[node.op])  # 1-bit output: 8-bit carrier + binarize
        else:
            table[node.op](L, node)
    out = L.where[graph.output]
    if L.tensors[out].dtype == "int8":
        outn = graph.node(graph.output)
        L.instrs.append(Instr("dequantize", [out], "output", {}, {}, outn.name))
        L.tensors["output"] = TensorInfo("float32", outn.shape)
        out = "output"
    meta = {"recipe": recipe.to_dict()}
    return Program(L.instrs, graph.input, out, L.tensors, meta, list(graph.extra_inputs))


from . import lower_elementwise, lower_transformer  # noqa: E402,F401  (register unary/mul and transformer lowerings)
from . import lower_shape  # noqa: E402,F401  (slice/upsample/const lowerings)
from . import lower_rnn  # noqa: E402,F401  (LSTM/GRU layer-directions)
from . import lower_hf  # noqa: E402,F401  (embedding, masked softmax, maskmul, reduce)
