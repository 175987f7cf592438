"""ONNX emitters for element-wise functions (``lut`` / ``unary_f``) and products (``mul`` / ``mul_f``).

A lookup table is the integer *implementation* of a float function, so the file carries the
function itself between DequantizeLinear and QuantizeLinear (Sigmoid, HardSwish, Gelu, ...): every
runtime knows it, and ONNX Runtime fuses ``DQ -> Sigmoid -> Q`` into its own table kernel
(QLinearSigmoid) and ``DQ -> Mul -> Q`` into QLinearMul. The interpreter's "onnxruntime" mode uses
the table built the way ORT computes (float32 dequantize, function, QuantizeLinear), see
``kernels.lut``.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...errors import ExportError
from ...program import Instr
from .core import OnnxBuilder, register

_SIMPLE = {"sigmoid": "Sigmoid", "tanh": "Tanh", "hardswish": "HardSwish", "mish": "Mish"}


def float_function(b: OnnxBuilder, ins: Instr, x: str, out: str | None = None) -> str:
    """The ONNX form of ``unary.FUNCTIONS[fn]`` on float tensor ``x``."""
    a, fn, name = ins.attrs, ins.attrs["fn"], ins.output
    if fn in _SIMPLE:
        return b.node(_SIMPLE[fn], [x], out, name=name)[0]
    if fn == "hardsigmoid":  # max(0, min(1, x/6 + 1/2)), PyTorch's constants
        return b.node("HardSigmoid", [x], out, name=name, alpha=1.0 / 6.0, beta=0.5)[0]
    if fn == "silu":
        s = b.node("Sigmoid", [x], name=f"{name}_sigmoid")[0]
        return b.node("Mul", [x, s], out, name=name)[0]
    if fn == "gelu":
        return b.node("Gelu", [x], out, name=name, approximate=str(a.get("approximate", "none")))[0]
    if fn == "leaky_relu":
        return b.node("LeakyRelu", [x], out, name=name, alpha=float(a["alpha"]))[0]
    if fn == "elu":
        if a.get("scale", 1.0) != 1.0 or a.get("input_scale", 1.0) != 1.0:
            raise ExportError(f"layer '{ins.node}': ELU with scale/input_scale has no ONNX export yet")
        return b.node("Elu", [x], out, name=name, alpha=float(a["alpha"]))[0]
    if fn == "affine":
        y = b.node("Mul", [x, b.const("mul", np.float32(a["mul"]))], name=f"{name}_mul")[0]
        return b.node("Add", [y, b.const("add", np.float32(a["add"]))], out, name=name)[0]
    raise ExportError(f"layer '{ins.node}': element-wise function {fn!r} has no ONNX export")


@register("lut")
def lut(b: OnnxBuilder, ins: Instr) -> None:
    if b.touches_wide(ins):  # 16-bit: the table itself (Gather), exactly the onnxruntime mode's ``table_ort``
        _table_lookup(b, ins)
        return
    y = float_function(b, ins, b.dq(ins.inputs[0]))
    b.quantize_into(y, ins.output)


def _table_lookup(b: OnnxBuilder, ins: Instr) -> None:
    """``table_ort[q - in_qmin]`` as Cast(int32) -> Sub -> Gather: an int16 input has no fused
    lookup kernel in ONNX Runtime, and the float function (e.g. Gelu's erf) differs by runtime."""
    x, out = ins.inputs[0], ins.output
    t = b.type_of(out)
    table = b.const(f"{out}_table", (ins.arrays["table_ort"].astype(np.int32) + t.offset).astype(t.np_dtype), share=False)
    xi = b.node("Cast", [x], name=f"{out}_i32", to=TensorProto.INT32)[0]
    lo = int(ins.attrs["in_qmin"]) + b.type_of(x).offset
    idx = b.node("Sub", [xi, b.const(f"{out}_in_qmin", np.int32(lo))], name=f"{out}_index")[0]
    b.node("Gather", [table, idx], out, name=out, axis=0)


@register("mul")
def mul(b: OnnxBuilder, ins: Instr) -> None:
    y = b.node("Mul", [b.dq(ins.inputs[0]), b.dq(ins.inputs[1])], name=ins.output)[0]
    b.quantize_into(y, ins.output, *b.out_bounds(ins))


@register("unary_f")
def unary_f(b: OnnxBuilder, ins: Instr) -> None:
    float_function(b, ins, ins.inputs[0], ins.output)


@register("mul_f")
def mul_f(b: OnnxBuilder, ins: Instr) -> None:
    b.node("Mul", list(ins.inputs), ins.output, name=ins.output)

