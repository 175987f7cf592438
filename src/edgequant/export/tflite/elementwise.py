"""TFLite emitters for the integer region's edges and element-wise ops: QUANTIZE, DEQUANTIZE, ADD
(with its fused activation) and clamps (MAXIMUM/MINIMUM or a fused RELU).

An int16 ADD (act16) sets ``pot_scale_int16 = false``: LiteRT then takes its general-scale 16-bit
path (inputs shifted left by 15, the interpreter's ``wide.ADD_LEFT_SHIFT_16``) instead of the
power-of-two-scale kernel the schema's default selects."""
from __future__ import annotations

from ...program import Instr
from .builder import ACTIVATIONS
from .core import Emitter, binary_form, finish_act, register


@register("quantize")
def _quantize(e: Emitter, ins: Instr) -> None:
    x = e.where[ins.inputs[0]]
    form = next(iter(x))
    shape = e.m.tensors[x[form]].shape
    out = e.new(ins.output, shape)
    e.where[ins.output] = {form: out}
    e.m.op("QUANTIZE", [x[form]], [out])


@register("dequantize")
def _dequantize(e: Emitter, ins: Instr) -> None:
    src = ins.inputs[0]
    form = "nhwc" if e.layout == "nhwc" else "nchw"
    x = e.get(src, form)
    out = e.new(ins.output, e.m.tensors[x].shape, dtype="float32", quant=None)
    e.where[ins.output] = {form: out}
    e.m.op("DEQUANTIZE", [x], [out])


@register("add", "add_f")
def _add(e: Emitter, ins: Instr) -> None:
    integer = ins.op == "add"
    form = binary_form(e, ins.inputs)
    a, b = (e.get(n, form) for n in ins.inputs)
    act, clamp = e.fused_act(ins) if integer else e.float_act(ins)
    out = e.define(ins.output, form)
    raw = out if clamp is None else e.new(f"{ins.output}/preact", e.m.tensors[out].shape, like=ins.output)
    # int16 ADD: the general-scale kernel (left shift 15, the interpreter's), not the power-of-two one
    wide = {"PotScaleInt16": False} if integer and e.dtype(ins.output) == "int16" else {}
    e.m.op("ADD", [a, b], [raw], FusedActivationFunction=ACTIVATIONS[act], **wide)
    finish_act(e, ins, raw, out, clamp, integer)


@register("clamp")
def _clamp(e: Emitter, ins: Instr) -> None:
    src = ins.inputs[0]
    form = e.form_of(src)
    x = e.where[src][form]
    out = e.define(ins.output, form)
    e.clamp(x, out, ins.output, ins.attrs["lo"], ins.attrs["hi"], e.dtype(src) == "int8")
