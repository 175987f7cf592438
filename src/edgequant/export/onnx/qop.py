"""QOperator emitters: one quantized operator per integer instruction.

QLinearConv is standard ONNX; Linear, Add, Concat and the average pools use ONNX Runtime's
contrib operators (domain ``com.microsoft``: QGemm, QLinearAdd, QLinearConcat,
QLinearAveragePool, QLinearGlobalAveragePool), the same ones ONNX Runtime's own QOperator
quantizer emits, so this form targets ONNX Runtime. Quantize/dequantize and the ops that leave
the integers unchanged (MaxPool, Reshape, Pad, Clip) are shared with the QDQ form.
"""
from __future__ import annotations

import numpy as np

from ...program import Instr
from .core import MS_DOMAIN, OnnxBuilder, conv_attrs, conv_weight, register
from .qdq import avgpool_plan

QOP = ("qoperator",)


def _finish(b: OnnxBuilder, ins: Instr, lo: int, hi: int) -> list[str] | str:
    """Output name for the quantized op, or a temp name when a narrowing Clip must follow."""
    return ins.output if lo <= -128 and hi >= 127 else b.fresh(f"{ins.output}_wide")


def _weight_qparams(b: OnnxBuilder, ins: Instr) -> tuple[str, str]:
    s, z, _ = b.weight_scale(ins)
    return s, z


def _bias(b: OnnxBuilder, ins: Instr) -> str:
    return b.const(f"{ins.output}_bias", np.asarray(ins.arrays["bias"], np.int32), share=False)


@register("conv", QOP)
def conv(b: OnnxBuilder, ins: Instr) -> None:
    lo, hi = b.out_bounds(ins)
    x = ins.inputs[0]
    xa, w = b.align_conv_input(ins, conv_weight(ins, ins.arrays["weight"]))
    ws, wz = _weight_qparams(b, ins)
    out = _finish(b, ins, lo, hi)
    b.node("QLinearConv", [xa, *b.qparams(x), b.weight_int8(ins, w), ws, wz,
                           *b.qparams(ins.output), _bias(b, ins)], out, name=ins.output, **conv_attrs(ins))
    if out != ins.output:
        b.clip_int(out, ins.output, lo, hi)


@register("linear", QOP, nd_rows=True)
def linear(b: OnnxBuilder, ins: Instr) -> None:
    lo, hi = b.out_bounds(ins)
    x = ins.inputs[0]
    ws, wz = _weight_qparams(b, ins)
    out = _finish(b, ins, lo, hi)
    b.node("QGemm", [x, *b.qparams(x), b.weight_int8(ins), ws, wz, _bias(b, ins), *b.qparams(ins.output)], out,
           domain=MS_DOMAIN, name=ins.output, transB=1)
    if out != ins.output:
        b.clip_int(out, ins.output, lo, hi)


@register("add", QOP)
def add(b: OnnxBuilder, ins: Instr) -> None:
    lo, hi = b.out_bounds(ins)
    a, c = ins.inputs
    out = _finish(b, ins, lo, hi)
    b.node("QLinearAdd", [a, *b.qparams(a), c, *b.qparams(c), *b.qparams(ins.output)], out, domain=MS_DOMAIN,
           name=ins.output)
    if out != ins.output:
        b.clip_int(out, ins.output, lo, hi)


# registered by shape.py, which wraps it for constant (batch-1) inputs
def cat(b: OnnxBuilder, ins: Instr) -> None:
    qp = b.program.tensors[ins.output].qparams
    out = _finish(b, ins, qp.qmin, qp.qmax)
    if all(ins.attrs["same"]):
        b.node("Concat", list(ins.inputs), ins.output, axis=int(ins.attrs["axis"]))
        return
    args = [*b.qparams(ins.output)]
    for x in ins.inputs:
        args += [x, *b.qparams(x)]
    b.node("QLinearConcat", args, out, domain=MS_DOMAIN, name=ins.output, axis=int(ins.attrs["axis"]))
    if out != ins.output:
        b.clip_int(out, ins.output, qp.qmin, qp.qmax)


@register("avgpool", QOP)
def avgpool(b: OnnxBuilder, ins: Instr) -> None:
    x = ins.inputs[0]
    explicit, attrs = avgpool_plan(ins)
    if explicit is not None:
        x = b.node("Pad", [x, b.const("pads", np.array(explicit, np.int64)), b.qparams(x)[1]], name=f"{ins.output}_pad",
                   mode="constant")[0]
    qp = b.program.tensors[ins.output].qparams
    out = _finish(b, ins, qp.qmin, qp.qmax)
    b.node("QLinearAveragePool", [x, *b.qparams(ins.inputs[0]), *b.qparams(ins.output)], out, domain=MS_DOMAIN,
           name=ins.output, **attrs)
    if out != ins.output:
        b.clip_int(out, ins.output, qp.qmin, qp.qmax)


@register("mean", QOP)
def mean(b: OnnxBuilder, ins: Instr) -> None:
    x = ins.inputs[0]
    qp = b.program.tensors[ins.output].qparams
    keep = ins.attrs.get("keepdim", True)
    narrow = qp.qmin > -128 or qp.qmax < 127
    out = ins.output if keep and not narrow else b.fresh(f"{ins.output}_4d")
    y = b.node("QLinearGlobalAveragePool", [x, *b.qparams(x), *b.qparams(ins.output)], out, domain=MS_DOMAIN,
               name=ins.output, channels_last=0)[0]
    if narrow:
        y = b.clip_int(y, ins.output if keep else b.fresh(f"{ins.output}_4d_clip"), qp.qmin, qp.qmax)
    if not keep:
        b.node("Flatten", [y], ins.output, axis=1)

