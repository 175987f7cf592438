"""QDQ emitters: integer instructions as QuantizeLinear/DequantizeLinear around float ONNX ops.

The QDQ form is what ONNX Runtime, TensorRT and OpenVINO read: each integer tensor is a
QuantizeLinear output; a consumer sees it through its own DequantizeLinear. ONNX Runtime fuses
``DQ -> Conv -> Q`` into QLinearConv, ``DQ -> Gemm -> Q`` into QGemm, ``DQ -> Add -> Q`` into
QLinearAdd, and so on, so the file runs as integer kernels. Ops that do not change the integers
(MaxPool, Reshape, Pad, Clip, Concat of equal qparams) run directly on the 8-bit tensor: no Q/DQ
pair for ORT to remove, and bit-exact by construction.

Each emitter is ``fn(builder, instr) -> None`` and writes the ONNX tensor named ``instr.output``.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...program import Instr
from . import wide
from .masked import wide_mean
from .core import OnnxBuilder, conv_attrs, conv_weight, onnx_pads, pool_attrs, register

QDQ = ("qdq",)  # QOperator has its own conv, linear, add, avgpool, mean (qop.py)


# -- edges of the integer region ----------------------------------------------------------------
@register("quantize")
def quantize(b: OnnxBuilder, ins: Instr) -> None:
    b.quantize_into(ins.inputs[0], ins.output)


@register("dequantize")
def dequantize(b: OnnxBuilder, ins: Instr) -> None:
    s, z = b.qparams(ins.inputs[0])
    b.node("DequantizeLinear", [ins.inputs[0], s, z], ins.output, name=f"{ins.output}_dq")


# -- integer compute: DQ -> float op -> Q ----------------------------------------------------------
@register("conv", QDQ)
def conv(b: OnnxBuilder, ins: Instr) -> None:
    if b.touches_wide(ins):  # 16-bit: the exact accumulator (export/onnx/wide.py)
        wide.conv(b, ins)
        return
    x, w = b.align_conv_input(ins, conv_weight(ins, ins.arrays["weight"]))
    y = b.node("Conv", [b.dq(ins.inputs[0], x), b.dq_weight(ins, w), b.dq_bias(ins)], name=ins.output, **conv_attrs(ins))[0]
    b.quantize_into(y, ins.output, *b.out_bounds(ins))


@register("linear", QDQ, nd_rows=True)
def linear(b: OnnxBuilder, ins: Instr) -> None:
    if b.touches_wide(ins):  # 16-bit: the exact accumulator (export/onnx/wide.py)
        wide.linear(b, ins)
        return
    y = b.node("Gemm", [b.dq(ins.inputs[0]), b.dq_weight(ins), b.dq_bias(ins)], name=ins.output, transB=1)[0]
    b.quantize_into(y, ins.output, *b.out_bounds(ins))


@register("add", QDQ)
def add(b: OnnxBuilder, ins: Instr) -> None:
    y = b.node("Add", [b.dq(ins.inputs[0]), b.dq(ins.inputs[1])], name=ins.output)[0]
    b.quantize_into(y, ins.output, *b.out_bounds(ins))


# registered by shape.py, which wraps it for constant (batch-1) inputs
def cat(b: OnnxBuilder, ins: Instr) -> None:
    axis = int(ins.attrs["axis"])
    if all(ins.attrs["same"]):  # the integers are already on the output grid
        b.node("Concat", list(ins.inputs), ins.output, axis=axis)
        return
    y = b.node("Concat", [b.dq(i) for i in ins.inputs], name=ins.output, axis=axis)[0]
    b.quantize_into(y, ins.output)


def avgpool_plan(ins: Instr) -> tuple[list[int] | None, dict]:
    """(explicit pads or None, AveragePool attrs) giving PyTorch's divisor: explicit padding
    counted iff count_include_pad, the ceil-mode overhang (``extra``) never."""
    a = ins.attrs
    t, bo, l, r = a["padding"]
    if a["count_include_pad"] and any(a["padding"]) and any(a.get("extra", (0, 0))):
        return [0, 0, t, l, 0, 0, bo, r], {**pool_attrs(ins), "pads": [0, 0, *a["extra"]], "count_include_pad": 0}
    if a["count_include_pad"] and any(a["padding"]):
        return None, {**pool_attrs(ins), "count_include_pad": 1}
    return None, {**pool_attrs(ins), "count_include_pad": 0}


@register("avgpool", QDQ)
def avgpool(b: OnnxBuilder, ins: Instr) -> None:
    x = ins.inputs[0]
    explicit, attrs = avgpool_plan(ins)
    if explicit is not None:  # pad with the zero point (real 0) on the integer tensor
        x = b.node("Pad", [x, b.const("pads", np.array(explicit, np.int64)), b.qparams(x)[1]], name=f"{ins.output}_pad",
                   mode="constant")[0]
        s, z = b.qparams(ins.inputs[0])
        xf = b.node("DequantizeLinear", [x, s, z], name=f"{ins.output}_dq")[0]
    else:
        xf = b.dq(x)
    y = b.node("AveragePool", [xf], name=ins.output, **attrs)[0]
    b.quantize_into(y, ins.output)


@register("mean", QDQ)
def mean(b: OnnxBuilder, ins: Instr) -> None:
    if b.touches_wide(ins):  # no 16-bit QLinearGlobalAveragePool: the exact integer sum, as the onnxruntime mode
        wide_mean(b, ins)
        return
    y = b.node("GlobalAveragePool", [b.dq(ins.inputs[0])], name=ins.output)[0]
    if ins.attrs.get("keepdim", True):
        b.quantize_into(y, ins.output)
        return
    q = b.quantize_into(y, ins.output, out=b.fresh(f"{ins.output}_4d"))  # (N, C, 1[, 1])
    b.node("Flatten", [q], ins.output, axis=1)


# -- dtype-generic ops: run on the 8-bit (or float) tensor itself --------------------------------------
@register("maxpool")
def maxpool(b: OnnxBuilder, ins: Instr) -> None:
    b.node("MaxPool", [ins.inputs[0]], ins.output, **pool_attrs(ins))


@register("reshape")
def reshape(b: OnnxBuilder, ins: Instr) -> None:
    shape = b.const("shape", np.array([0, *ins.attrs["shape"]], np.int64))
    b.node("Reshape", [ins.inputs[0], shape], ins.output)


@register("pad")
def pad(b: OnnxBuilder, ins: Instr) -> None:
    x = ins.inputs[0]
    pads = b.const("pads", np.array(onnx_pads(ins.attrs["pads"]), np.int64))
    if b.is_wide(x):  # ONNX Runtime has no int16 Pad: pad the exact int32 widening
        xi = b.node("Cast", [x], name=f"{ins.output}_i32", to=TensorProto.INT32)[0]
        p = b.node("Pad", [xi, pads, b.const("pad_value_i32", np.int32(ins.attrs["value"]))], name=ins.output, mode="constant")[0]
        b.node("Cast", [p], ins.output, name=f"{ins.output}_i16", to=TensorProto.INT16)
        return
    if b.is_int(x):
        value = b.const("pad_value", b.encode(ins.attrs["value"]), b.act.np_dtype)
    else:
        value = b.const("pad_value", np.float32(ins.attrs["value_real"]))
    b.node("Pad", [x, pads, value], ins.output, mode="constant")


@register("clamp")
def clamp(b: OnnxBuilder, ins: Instr) -> None:
    x = ins.inputs[0]
    if b.is_int(x):
        b.clip_int(x, ins.output, int(ins.attrs["lo"]), int(ins.attrs["hi"]))
        return
    float_clip(b, x, ins.output, ins.attrs["lo_real"], ins.attrs["hi_real"])


def float_clip(b: OnnxBuilder, x: str, out: str | None, lo: float, hi: float) -> str:
    """Relu for (0, inf), otherwise Clip with absent bounds for infinities."""
    if lo == 0.0 and hi == float("inf"):
        return b.node("Relu", [x], out, name=f"{out or x}_relu")[0]
    lo_c = "" if lo == float("-inf") else b.const("clip_lo", np.float32(lo))
    hi_c = "" if hi == float("inf") else b.const("clip_hi", np.float32(hi))
    return b.node("Clip", [x, lo_c, hi_c], out, name=f"{out or x}_clip")[0]
