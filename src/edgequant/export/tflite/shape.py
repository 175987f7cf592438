"""TFLite emitters for data movement, constants and products: ``slice`` (STRIDED_SLICE), ``transpose``,
``upsample`` (RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR), ``const`` (a constant tensor), ``mul``
(MUL), and ``reshape`` (RESHAPE) / ``pad`` (PAD). Registered into ``core.EMITTERS``.

All keep LiteRT's reference kernels bit-exact with ``q.run(rounding="gemmlowp")``: slicing and
nearest resizing move int8 values; int8 RESIZE_BILINEAR is ``ResizeBilinearInteger``, which the
interpreter's kernel is (``kernels.shape``); int8 MUL requantizes ``(a - za) * (b - zb)`` with
the same QuantizeMultiplier of ``s_a * s_b / s_y``. A constant is stored in both layouts (4-D),
so no TRANSPOSE runs on it. ``cat`` of a constant with activations (ViT's class token) broadcasts
the constant to the runtime batch first (SHAPE, BROADCAST_TO), so the batch stays dynamic.
"""
from __future__ import annotations

import numpy as np

from ...errors import ExportError
from ...program import Instr
from .builder import ACTIVATIONS, OPS
from .core import AXIS_TO_NHWC, NHWC, Emitter, binary_form, cat, register

OPS.update({
    "MUL": (18, "MulOptions", 21),
    "RESIZE_BILINEAR": (23, "ResizeBilinearOptions", 15),
    "STRIDED_SLICE": (45, "StridedSliceOptions", 32),
    "RESIZE_NEAREST_NEIGHBOR": (97, "ResizeNearestNeighborOptions", 74),
    "SHAPE": (77, "ShapeOptions", 55),
    "BROADCAST_TO": (130, None, 0),
})


@register("const", "const_f")
def _const(e: Emitter, ins: Instr) -> None:
    v = ins.arrays["value"]
    integer = ins.op == "const"
    dt = "int8" if integer else "float32"
    q = e.quant(ins.output) if integer else None
    forms = {"nchw": e.m.const(ins.output, v.astype(dt), dt, q)}
    if v.ndim == 4:
        forms["nhwc"] = e.m.const(f"{ins.output}/nhwc", np.ascontiguousarray(v.transpose(NHWC)).astype(dt), dt, q)
    e.where[ins.output] = forms


def _is_const(e: Emitter, name: str) -> bool:
    return any(i.output == name and i.op in ("const", "const_f") for i in e.p.instrs)


@register("slice")
def _slice(e: Emitter, ins: Instr) -> None:
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


@register("upsample")
def _upsample(e: Emitter, ins: Instr) -> None:
    src, a = ins.inputs[0], ins.attrs
    x = e.get(src, "nhwc")
    size = e.m.const(f"{ins.output}/size", np.array(a["size"], np.int32))
    out = e.define(ins.output, "nhwc")
    if a["mode"] == "nearest":
        e.m.op("RESIZE_NEAREST_NEIGHBOR", [x, size], [out], AlignCorners=False, HalfPixelCenters=False)
        return
    align = bool(a["align_corners"])
    e.m.op("RESIZE_BILINEAR", [x, size], [out], AlignCorners=align, HalfPixelCenters=not align)


@register("transpose")
def _transpose(e: Emitter, ins: Instr) -> None:
    """TRANSPOSE in edgequant's order; the NCHW <-> NHWC permutations of a 4-D tensor cost nothing:
    the other layout of the same bytes is already there (or is made once, lazily, by ``get``)."""
    src, perm = ins.inputs[0], tuple(int(p) for p in ins.attrs["perm"])
    if len(e.shape(src)) == 4 and perm == NHWC and "nhwc" in e.where[src]:
        e.where[ins.output] = {"nchw": e.where[src]["nhwc"]}  # (N, H, W, C) in edgequant order
        return
    if len(e.shape(src)) == 4 and perm == (0, 3, 1, 2) and e.form_of(src) == "nchw":
        e.where[ins.output] = {"nhwc": e.where[src]["nchw"]}  # its NHWC form is the input as it is
        return
    x = e.get(src, "nchw") if len(e.shape(src)) == 4 else e.where[src][e.form_of(src)]
    out = e.define(ins.output, "nchw")
    e.m.op("TRANSPOSE", [x, e.m.const(f"{ins.output}/perm", np.array(perm, np.int32))], [out])


@register("mul", "mul_f")
def _mul(e: Emitter, ins: Instr) -> None:
    integer = ins.op == "mul"
    if integer and ins.attrs.get("rounding") == "single":
        raise ExportError(f"layer '{ins.node}': a sub-8-bit product has no TFLite kernel")
    form = binary_form(e, ins.inputs)
    a, b = (e.get(n, form) for n in ins.inputs)
    out = e.define(ins.output, form)
    e.m.op("MUL", [a, b], [out], FusedActivationFunction=ACTIVATIONS["NONE"])


@register("cat", "cat_f")
def _cat_const(e: Emitter, ins: Instr) -> None:
    """CONCATENATION, with each constant input (batch 1) first broadcast to the runtime batch:
    BROADCAST_TO to ``[batch of an activation input (SHAPE + STRIDED_SLICE), rest of the constant's shape]``."""
    consts = [n for n in ins.inputs if _is_const(e, n)]
    if not consts:
        cat(e, ins)
        return
    form = binary_form(e, ins.inputs)
    ref = next((n for n in ins.inputs if n not in consts), None)
    if ref is None:
        raise ExportError(f"layer '{ins.node}': a concatenation of constants only")
    shape = e.m.tensor(f"{ins.output}/shape", (len(e.shape(ref)),), "int32")
    e.m.op("SHAPE", [e.get(ref, form)], [shape], OutType=2)  # int32
    batch = e.m.tensor(f"{ins.output}/batch", (1,), "int32")
    one = np.ones(1, np.int32)
    e.m.op("STRIDED_SLICE", [shape, e.m.const(f"{ins.output}/b0", np.zeros(1, np.int32)),
                             e.m.const(f"{ins.output}/b1", one), e.m.const(f"{ins.output}/b1s", one)], [batch],
           BeginMask=0, EndMask=0, EllipsisMask=0, NewAxisMask=0, ShrinkAxisMask=0)
    for n in consts:
        c = e.get(n, form)
        rest = np.array(e.m.tensors[c].shape[1:], np.int32)
        full = e.m.tensor(f"{n}/bshape", (1 + rest.size,), "int32")
        e.m.op("CONCATENATION", [batch, e.m.const(f"{n}/rest", rest)], [full], Axis=0, FusedActivationFunction=0)
        out = e.new(f"{n}/batch", (e.batch,) + tuple(e.m.tensors[c].shape[1:]), like=n)
        e.m.op("BROADCAST_TO", [c, full], [out])
        e.where[n] = {form: out}
    cat(e, ins)


@register("reshape")
def _reshape(e: Emitter, ins: Instr) -> None:
    name_in = ins.inputs[0]
    shp = e.shape(name_in)
    # NHWC and NCHW hold the same bytes when H = W = 1: no transpose needed then
    form = e.form_of(name_in)
    if len(shp) == 4 and form == "nhwc" and shp[2] * shp[3] != 1:
        form = "nchw"
    x = e.get(name_in, form) if len(shp) == 4 else e.where[name_in][form]
    new_shape = [-1] + [int(d) for d in ins.attrs["shape"]]
    out = e.define(ins.output, "nchw")
    e.m.op("RESHAPE", [x, e.m.const(f"{ins.output}/shape", np.array(new_shape, np.int32))], [out], NewShape=new_shape)


@register("pad")
def _pad(e: Emitter, ins: Instr) -> None:
    name_in = ins.inputs[0]
    form = e.form_of(name_in)
    x = e.where[name_in][form]
    pads = [tuple(int(v) for v in p) for p in ins.attrs["pads"]]
    if form == "nhwc":
        pads = [pads[i] for i in NHWC]
    out = e.define(ins.output, form)
    e.pad(x, out, ins.output, name_in, pads, ins.attrs["value"])
