"""ONNX emitters for the ops that read integer inputs (token ids, padding masks): ``embedding``,
``softmax_masked``, ``maskmul``, ``reduce`` (masked mean pooling, sums/means over any dim), their
float forms, and the 16-bit ``mean``.

* ``embedding``: ``Gather`` from the integer table (stored on the output grid, int8 in the
  activation type or int16): the same integers, exact.
* ``softmax_masked``: ``DQ -> Where(mask, x, lowest float32) -> Softmax -> Q``: masked keys get
  ``exp(lowest - max) = 0`` exactly. ONNX Runtime has no quantized softmax that takes a mask, so it
  runs this in float32, as the interpreter's "onnxruntime" mode does (``kernels.wide_ort``).
* ``reduce`` and the 16-bit ``mean``: written as the arithmetic the "onnxruntime" mode runs
  (``kernels.masked``, ``qmath.requantize``): the exact integer sum ``acc = sum(q - z)`` in int64
  (masked positions 0), ``v = float32(acc) * M`` (``/ float32(count)`` for a masked mean), ``Round``
  (half to even), ``+ z``, clamp, cast. Bit-exact in every runtime; why not ``DQ -> ReduceMean -> Q``:
  a float32 sum of 16-bit codes is not exact and has no interpreter counterpart.

A mask input is the (N, L) integer graph input, nonzero = keep, reshaped to the node's ``mask_view``.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...kernels.wide_ort import LOWEST
from ...program import Instr
from .core import OnnxBuilder, register


def _keep(b: OnnxBuilder, ins: Instr, like: str | None = None) -> str:
    """Boolean keep-mask (N, *mask_view) of the instruction's mask input; expanded to ``like``'s shape."""
    view = [int(v) for v in ins.attrs["mask_view"]]
    m = b.node("Reshape", [ins.inputs[1], b.const("mask_view", np.array([0, *view], np.int64))], name=f"{ins.output}_mask")[0]
    k = b.node("Cast", [m], name=f"{ins.output}_keep", to=TensorProto.BOOL)[0]
    if like is None:
        return k
    shape = b.node("Shape", [like], name=f"{ins.output}_shape")[0]
    return b.node("Expand", [k, shape], name=f"{ins.output}_keep_full")[0]


# -- embedding ------------------------------------------------------------------------------------
@register("embedding")
def embedding(b: OnnxBuilder, ins: Instr) -> None:
    t = b.type_of(ins.output)
    table = b.const(f"{ins.output}_table", (ins.arrays["table"].astype(np.int32) + t.offset).astype(t.np_dtype), share=False)
    b.node("Gather", [table, ins.inputs[0]], ins.output, name=ins.output, axis=0)


@register("embedding_f")
def embedding_f(b: OnnxBuilder, ins: Instr) -> None:
    table = b.const(f"{ins.output}_table", ins.arrays["weight"].astype(np.float32), share=False)
    b.node("Gather", [table, ins.inputs[0]], ins.output, name=ins.output, axis=0)


# -- masked softmax -------------------------------------------------------------------------------
def _masked_softmax(b: OnnxBuilder, ins: Instr, x: str, out: str | None) -> str:
    low = b.const("lowest_f64", np.float64(LOWEST)) if b.in_f64(ins) else b.const("lowest", np.float32(LOWEST))
    xm = b.node("Where", [_keep(b, ins), x, low], name=f"{ins.output}_masked")[0]
    return b.node("Softmax", [xm], out, name=ins.output, axis=-1)[0]


@register("softmax_masked")
def softmax_masked(b: OnnxBuilder, ins: Instr) -> None:
    y = _masked_softmax(b, ins, b.to_compute(ins, b.dq(ins.inputs[0])), None)
    b.quantize_into(b.from_compute(ins, y), ins.output)


@register("softmax_masked_f")
def softmax_masked_f(b: OnnxBuilder, ins: Instr) -> None:
    _masked_softmax(b, ins, ins.inputs[0], ins.output)


@register("maskmul")
def maskmul(b: OnnxBuilder, ins: Instr) -> None:
    x = ins.inputs[0]
    if b.is_int(x):
        zero = b.const(f"{x}_zero", b.encode(int(b.program.tensors[x].qparams.zero_point), x), b.type_of(x).np_dtype)
    else:
        zero = b.const("zero_f", np.float32(0))
    b.node("Where", [_keep(b, ins), x, zero], ins.output, name=ins.output)


# -- reductions -----------------------------------------------------------------------------------
def int_reduce(b: OnnxBuilder, ins: Instr, axes: list[int], keepdims: bool, masked: bool) -> None:
    """``clamp(Round(float32(sum(q - z)) * M [/ float32(count)]) + z_y)`` into ``ins.output``
    (``M`` = the instruction's float32 ``multiplier``); see the module docstring."""
    x, out = ins.inputs[0], ins.output
    xi = b.node("Cast", [x], name=f"{out}_i64", to=TensorProto.INT64)[0]
    zx = b.encode(int(b.program.tensors[x].qparams.zero_point), x)
    if zx:
        xi = b.node("Sub", [xi, b.const(f"{x}_zp_i64", np.int64(zx))], name=f"{out}_centre")[0]
    ax = b.const(f"{out}_axes", np.array(axes, np.int64))
    if masked:
        keep = _keep(b, ins, xi)
        xi = b.node("Where", [keep, xi, b.const("i64_zero", np.int64(0))], name=f"{out}_kept")[0]
    acc = b.node("ReduceSum", [xi, ax], name=f"{out}_sum", keepdims=int(keepdims))[0]
    v = b.node("Cast", [acc], name=f"{out}_acc_f", to=TensorProto.FLOAT)[0]
    v = b.node("Mul", [v, b.const(f"{out}_multiplier", np.float32(ins.arrays["multiplier"].ravel()[0]))], name=f"{out}_scale")[0]
    if masked:
        n = b.node("Cast", [keep], name=f"{out}_kept_i64", to=TensorProto.INT64)[0]
        n = b.node("ReduceSum", [n, ax], name=f"{out}_count", keepdims=int(keepdims))[0]
        n = b.node("Max", [n, b.const("i64_one", np.int64(1))], name=f"{out}_count1")[0]
        n = b.node("Cast", [n], name=f"{out}_count_f", to=TensorProto.FLOAT)[0]
        v = b.node("Div", [v, n], name=f"{out}_mean")[0]
    qy, t = b.program.tensors[out].qparams, b.type_of(out)
    r = b.node("Round", [v], name=f"{out}_round")[0]
    r = b.node("Add", [r, b.const(f"{out}_zp_f", np.float32(int(qy.zero_point) + t.offset))], name=f"{out}_zp")[0]
    r = b.node("Clip", [r, b.const(f"{out}_qmin_f", np.float32(qy.qmin + t.offset)),
                        b.const(f"{out}_qmax_f", np.float32(qy.qmax + t.offset))], name=f"{out}_clamp")[0]
    b.node("Cast", [r], out, name=f"{out}_cast", to=t.elem_type)


def _axes(b: OnnxBuilder, x: str, dims) -> list[int]:
    nd = len(b.program.tensors[x].shape)
    return [int(d) % nd for d in dims]


@register("reduce")
def reduce(b: OnnxBuilder, ins: Instr) -> None:
    a = ins.attrs
    int_reduce(b, ins, _axes(b, ins.inputs[0], a["dims"]), bool(a["keepdim"]), len(ins.inputs) > 1)


@register("reduce_f")
def reduce_f(b: OnnxBuilder, ins: Instr) -> None:
    a, x, out = ins.attrs, ins.inputs[0], ins.output
    ax = b.const(f"{out}_axes", np.array(_axes(b, x, a["dims"]), np.int64))
    keepdims = int(bool(a["keepdim"]))
    if len(ins.inputs) == 1:
        b.node("ReduceSum" if a["kind"] == "sum" else "ReduceMean", [x, ax], out, name=out, keepdims=keepdims)
        return
    k = b.node("Cast", [_keep(b, ins, x)], name=f"{out}_keep_f", to=TensorProto.FLOAT)[0]
    total = b.node("ReduceSum", [b.node("Mul", [x, k], name=f"{out}_kept")[0], ax], name=f"{out}_sum", keepdims=keepdims)[0]
    if a["kind"] == "sum":
        b.node("Identity", [total], out)
        return
    n = b.node("ReduceSum", [k, ax], name=f"{out}_count", keepdims=keepdims)[0]
    n = b.node("Max", [n, b.const("one_f", np.float32(1))], name=f"{out}_count1")[0]
    b.node("Div", [total, n], out, name=out)


def wide_mean(b: OnnxBuilder, ins: Instr) -> None:
    """Global mean over the spatial axes with a 16-bit input or output (``qdq.mean`` calls it)."""
    nd = len(b.program.tensors[ins.inputs[0]].shape)
    int_reduce(b, ins, list(range(2, nd)), bool(ins.attrs.get("keepdim", True)), False)
