"""Float and dynamic-int8 emitters (fp32, fp16 and dyn8 recipes).

* ``conv_f``/``linear_f``: Conv / Gemm with float32 weights, or float16 weights widened by a
  ``Cast`` that ONNX Runtime folds at load (half the file, fp32 arithmetic as the interpreter).
* ``conv_dyn``/``linear_dyn``: ONNX's own dynamic pattern -- DynamicQuantizeLinear (uint8, range of
  the batch), ConvInteger / MatMulInteger against the int8 weights, then
  ``float(acc) * (s_x * s_w[c]) + bias``. ONNX Runtime fuses the MatMul form into
  DynamicQuantizeMatMul; the interpreter's "onnxruntime" rounding mode computes the same.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...program import Instr
from .core import OnnxBuilder, conv_attrs, conv_weight, float_param, register
from .qdq import avgpool_plan, float_clip


def _act(b: OnnxBuilder, ins: Instr, y: str) -> None:
    """Fused activation (real bounds) as Relu/Clip writing ``ins.output``, or rename via Identity."""
    if "act" in ins.attrs:
        lo, hi = ins.attrs["act"]
        float_clip(b, y, ins.output, float(lo), float(hi))
    else:
        b.node("Identity", [y], ins.output)


def _out(ins: Instr) -> str | None:
    return None if "act" in ins.attrs else ins.output


@register("conv_f")
def conv_f(b: OnnxBuilder, ins: Instr) -> None:
    w = float_param(b, f"{ins.output}_w", conv_weight(ins, ins.arrays["weight"]))
    bias = float_param(b, f"{ins.output}_b", ins.arrays["bias"])
    y = b.node("Conv", [ins.inputs[0], w, bias], _out(ins), name=ins.output, **conv_attrs(ins))[0]
    if "act" in ins.attrs:
        _act(b, ins, y)


@register("linear_f", nd_rows=True)
def linear_f(b: OnnxBuilder, ins: Instr) -> None:
    w = float_param(b, f"{ins.output}_w", ins.arrays["weight"])
    bias = float_param(b, f"{ins.output}_b", ins.arrays["bias"])
    y = b.node("Gemm", [ins.inputs[0], w, bias], _out(ins), name=ins.output, transB=1)[0]
    if "act" in ins.attrs:
        _act(b, ins, y)


@register("add_f")
def add_f(b: OnnxBuilder, ins: Instr) -> None:
    y = b.node("Add", list(ins.inputs), _out(ins), name=ins.output)[0]
    if "act" in ins.attrs:
        _act(b, ins, y)


# registered by shape.py, which wraps it for constant (batch-1) inputs
def cat_f(b: OnnxBuilder, ins: Instr) -> None:
    b.node("Concat", list(ins.inputs), ins.output, axis=int(ins.attrs["axis"]))


@register("avgpool_f")
def avgpool_f(b: OnnxBuilder, ins: Instr) -> None:
    x = ins.inputs[0]
    explicit, attrs = avgpool_plan(ins)
    if explicit is not None:
        x = b.node("Pad", [x, b.const("pads", np.array(explicit, np.int64))], name=f"{ins.output}_pad", mode="constant")[0]
    b.node("AveragePool", [x], ins.output, **attrs)


@register("mean_f")
def mean_f(b: OnnxBuilder, ins: Instr) -> None:
    if ins.attrs.get("keepdim", True):
        b.node("GlobalAveragePool", [ins.inputs[0]], ins.output)
        return
    y = b.node("GlobalAveragePool", [ins.inputs[0]], name=ins.output)[0]
    b.node("Flatten", [y], ins.output, axis=1)


# -- dynamic int8 ---------------------------------------------------------------------------------
def _dyn(b: OnnxBuilder, ins: Instr, is_conv: bool) -> None:
    xq, xs, xz = b.node("DynamicQuantizeLinear", [ins.inputs[0]],
                        [b.fresh(f"{ins.output}_xq"), b.fresh(f"{ins.output}_xs"), b.fresh(f"{ins.output}_xz")])
    w = ins.arrays["weight"]
    ws = np.asarray(ins.arrays["w_scale"], np.float32)
    bias = np.asarray(ins.arrays["bias_f"], np.float32)
    if is_conv:
        w = conv_weight(ins, w)
        acc = b.node("ConvInteger", [xq, b.weight_int8(ins, w), xz], name=ins.output, **conv_attrs(ins))[0]
        bshape = (-1,) + (1,) * (w.ndim - 2)  # broadcast over (N, C_out, spatial...)
        ws, bias = ws.reshape(bshape), bias.reshape(bshape)
    else:
        acc = b.node("MatMulInteger", [xq, b.weight_int8(ins, np.ascontiguousarray(w.T)), xz], name=ins.output)[0]
    accf = b.node("Cast", [acc], name=f"{ins.output}_acc_f", to=TensorProto.FLOAT)[0]
    scale = b.node("Mul", [xs, b.const(f"{ins.output}_w_scale", ws, share=False)], name=f"{ins.output}_scale")[0]
    y = b.node("Mul", [accf, scale], name=f"{ins.output}_rescale")[0]
    y = b.node("Add", [y, b.const(f"{ins.output}_b", bias, share=False)], _out(ins), name=f"{ins.output}_bias")[0]
    if "act" in ins.attrs:
        _act(b, ins, y)


@register("conv_dyn")
def conv_dyn(b: OnnxBuilder, ins: Instr) -> None:
    _dyn(b, ins, True)


@register("linear_dyn", nd_rows=True)
def linear_dyn(b: OnnxBuilder, ins: Instr) -> None:
    _dyn(b, ins, False)
