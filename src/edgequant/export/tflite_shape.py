"""TFLite emitters for data movement, constants and products: ``slice`` (STRIDED_SLICE),
``upsample`` (RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR), ``const`` (a constant tensor), ``mul``
(MUL). Registered into ``tflite.EMITTERS`` (``tflite`` imports this module last).

All keep LiteRT's reference kernels bit-exact with ``q.run(rounding="gemmlowp")``: slicing and
nearest resizing move int8 values; int8 RESIZE_BILINEAR is ``ResizeBilinearInteger``, which the
interpreter's kernel is (``kernels.shape``); int8 MUL requantizes ``(a - za) * (b - zb)`` with
the same QuantizeMultiplier of ``s_a * s_b / s_y``. A constant is stored in both layouts (4-D),
so no TRANSPOSE runs on it. ``cat`` of a constant with activations (ViT's class token) would need
the runtime batch, which CONCATENATION cannot broadcast: an ``ExportError`` names the layer.
"""
from __future__ import annotations

import numpy as np

from ..errors import ExportError
from ..program import Instr
from .tflite import AXIS_TO_NHWC, EMITTERS, NHWC, _binary_form, _cat, _Emitter
from .tflite_builder import ACTIVATIONS, OPS

OPS.update({
    "MUL": (18, "MulOptions", 21),
    "RESIZE_BILINEAR": (23, "ResizeBilinearOptions", 15),
    "STRIDED_SLICE": (45, "StridedSliceOptions", 32),
    "RESIZE_NEAREST_NEIGHBOR": (97, "ResizeNearestNeighborOptions", 74),
})


def _const(e: _Emitter, ins: Instr) -> None:
    v = ins.arrays["value"]
    integer = ins.op == "const"
    dt = "int8" if integer else "float32"
    q = e.quant(ins.output) if integer else None
    forms = {"nchw": e.m.const(ins.output, v.astype(dt), dt, q)}
    if v.ndim == 4:
        forms["nhwc"] = e.m.const(f"{ins.output}/nhwc", np.ascontiguousarray(v.transpose(NHWC)).astype(dt), dt, q)
    e.where[ins.output] = forms


def _is_const(e: _Emitter, name: str) -> bool:
    return any(i.output == name and i.op in ("const", "const_f") for i in e.p.instrs)


def _slice(e: _Emitter, ins: Instr) -> None:
    src, a = ins.inputs[0], ins.attrs
    form = e.form_of(src)
    x = e.where[src][form]
    rank = len(e.shape(src))
    axis = int(a["axis"])
    if form == "nhwc" and rank == 4:
        axis = AXIS_TO_NHWC[axis]
    begin, end, strides = np.zeros(rank, np.int32), np.zeros(rank, np.int32), np.ones(rank, np.int32)
    begin[axis], end[axis], strides[axis] = int(a["start"]), int(a["stop"]), int(a["step"])
    mask = ((1 << rank) - 1) & ~(1 << axis)  # every other axis whole (the batch stays dynamic)
    out = e.define(ins.output, form)
    e.m.op("STRIDED_SLICE", [x, e.m.const(f"{ins.output}/begin", begin), e.m.const(f"{ins.output}/end", end),
                             e.m.const(f"{ins.output}/strides", strides)], [out],
           BeginMask=mask, EndMask=mask, EllipsisMask=0, NewAxisMask=0, ShrinkAxisMask=0)


def _upsample(e: _Emitter, ins: Instr) -> None:
    src, a = ins.inputs[0], ins.attrs
    x = e.get(src, "nhwc")
    size = e.m.const(f"{ins.output}/size", np.array(a["size"], np.int32))
    out = e.define(ins.output, "nhwc")
    if a["mode"] == "nearest":
        e.m.op("RESIZE_NEAREST_NEIGHBOR", [x, size], [out], AlignCorners=False, HalfPixelCenters=False)
        return
    align = bool(a["align_corners"])
    e.m.op("RESIZE_BILINEAR", [x, size], [out], AlignCorners=align, HalfPixelCenters=not align)


def _mul(e: _Emitter, ins: Instr) -> None:
    integer = ins.op == "mul"
    if integer and ins.attrs.get("rounding") == "single":
        raise ExportError(f"layer '{ins.node}': a sub-8-bit product has no TFLite kernel")
    form = _binary_form(e, ins.inputs)
    a, b = (e.get(n, form) for n in ins.inputs)
    out = e.define(ins.output, form)
    e.m.op("MUL", [a, b], [out], FusedActivationFunction=ACTIVATIONS["NONE"])


def _cat_const(e: _Emitter, ins: Instr) -> None:
    if any(_is_const(e, n) for n in ins.inputs):
        raise ExportError(f"layer '{ins.node}': concatenating a constant with activations (e.g. a class token) needs the "
                          "runtime batch size, which TFLite's CONCATENATION cannot broadcast; export to ONNX, or make the "
                          "constant an input-derived tensor")
    _cat(e, ins)


EMITTERS.update({"const": _const, "const_f": _const, "slice": _slice, "upsample": _upsample, "mul": _mul,
                 "mul_f": _mul, "cat": _cat_const, "cat_f": _cat_const})
