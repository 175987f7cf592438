"""ONNX emitters for data movement and constants: ``slice``, ``upsample``, ``const``/``const_f``,
and ``cat`` with a constant input (broadcast over the batch).

* ``slice`` is ``Slice`` on the 8-bit (or float) tensor itself: the same integers, no Q/DQ.
* ``upsample`` nearest is ``Resize`` (nearest, asymmetric, floor) on the 8-bit tensor: exact for
  whole factors. Bilinear on integers is written out as the integer arithmetic the interpreter
  runs (TFLite's ``ResizeBilinearInteger``, ``kernels.shape``): ``Gather`` the four neighbours,
  multiply by int32 weight tables, add, round half away from zero with an integer ``Div`` by
  2^20 (truncating, as ONNX Runtime divides integers). Why not ``Resize(linear)`` between DQ and
  Q: runtimes compute it in float with their own position arithmetic and rounding, so no
  interpreter mode could promise its integers; this form is bit-exact in every runtime.
* ``const`` is an initializer holding the integers (in the export's activation type), read by its
  consumers through DequantizeLinear like any integer tensor (ONNX Runtime fuses ``DQ(const) ->
  Add/Mul -> Q`` into QLinearAdd/QLinearMul); its batch dim is 1 and broadcasts, and ``cat``
  expands it to the batch with ``Expand``.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from ...errors import ExportError
from ...kernels.shape import FRAC, factors, resize_plan
from ...program import Instr
from .core import MS_DOMAIN, OnnxBuilder, register
from .float_ops import cat_f
from .qdq import cat as qdq_cat
from .qop import cat as qop_cat


def _producer(b: OnnxBuilder, tensor: str) -> str | None:
    return next((i.op for i in b.program.instrs if i.output == tensor), None)


@register("slice")
def slice_(b: OnnxBuilder, ins: Instr) -> None:
    a = ins.attrs
    args = [b.const("slice_" + k, np.array([int(a[k])], np.int64)) for k in ("start", "stop", "axis", "step")]
    b.node("Slice", [ins.inputs[0], *args], ins.output)


@register("upsample")
def upsample(b: OnnxBuilder, ins: Instr) -> None:
    x, a = ins.inputs[0], ins.attrs
    if a["mode"] == "nearest":
        fh, fw = factors(b.program.tensors[x].shape[2:], a["size"])
        scales = b.const("resize_scales", np.array([1, 1, fh, fw], np.float32))
        b.node("Resize", [x, "", scales], ins.output, mode="nearest", coordinate_transformation_mode="asymmetric",
               nearest_mode="floor")
        return
    if not b.is_int(x):
        shape = b.node("Shape", [x], name=f"{ins.output}_shape", end=2)[0]
        full = b.node("Concat", [shape, b.const("resize_hw", np.array(a["size"], np.int64))], name=f"{ins.output}_sizes",
                      axis=0)[0]
        mode = "align_corners" if a["align_corners"] else "pytorch_half_pixel"
        b.node("Resize", [x, "", "", full], ins.output, mode="linear", coordinate_transformation_mode=mode)
        return
    _bilinear_int(b, ins)


def _bilinear_int(b: OnnxBuilder, ins: Instr) -> None:
    x, a, name = ins.inputs[0], ins.attrs, ins.output
    h, w = b.program.tensors[x].shape[2:]
    y0, y1, fy = resize_plan(h, int(a["size"][0]), bool(a["align_corners"]))
    x0, x1, fx = resize_plan(w, int(a["size"][1]), bool(a["align_corners"]))
    one = 1 << FRAC
    wy = ((one - fy)[:, None], fy[:, None])
    wx = ((one - fx)[None, :], fx[None, :])
    xi = b.node("Cast", [x], name=f"{name}_i32", to=TensorProto.INT32)[0]
    if b.act.offset:
        xi = b.node("Sub", [xi, b.const("i32_offset", np.int32(b.act.offset))], name=f"{name}_int8")[0]
    rows = [b.node("Gather", [xi, b.const(f"{name}_rows", r.astype(np.int64), share=False)], name=f"{name}_g{k}", axis=2)[0]
            for k, r in enumerate((y0, y1))]
    acc = None
    for i, r in enumerate(rows):
        for j, c in enumerate((x0, x1)):
            g = b.node("Gather", [r, b.const(f"{name}_cols", c.astype(np.int64), share=False)], name=f"{name}_g{i}{j}", axis=3)[0]
            wgt = b.const(f"{name}_w{i}{j}", (wy[i] * wx[j]).astype(np.int32), share=False)
            t = b.node("Mul", [g, wgt], name=f"{name}_m{i}{j}")[0]
            acc = t if acc is None else b.node("Add", [acc, t], name=f"{name}_a{i}{j}")[0]
    half = 1 << (2 * FRAC - 1)
    pos = b.node("Greater", [acc, b.const("i32_zero", np.int32(0))], name=f"{name}_pos")[0]
    rnd = b.node("Where", [pos, b.const("i32_half", np.int32(half)), b.const("i32_mhalf", np.int32(-half))],
                 name=f"{name}_round")[0]
    num = b.node("Add", [acc, rnd], name=f"{name}_num")[0]
    y = b.node("Div", [num, b.const("i32_one20", np.int32(1 << (2 * FRAC)))], name=f"{name}_div")[0]
    if b.act.offset:
        y = b.node("Add", [y, b.const("i32_offset", np.int32(b.act.offset))], name=f"{name}_u8")[0]
    b.node("Cast", [y], name, to=b.act.elem_type)


@register("const")
@register("const_f")
def const(b: OnnxBuilder, ins: Instr) -> None:
    v = ins.arrays["value"]
    if ins.op == "const":
        t = b.type_of(ins.output)
        arr = (v.astype(np.int32) + t.offset).astype(t.np_dtype)
    else:
        arr = v.astype(np.float32)
    b.inits.append(numpy_helper.from_array(arr, ins.output))


def _expand_batch(b: OnnxBuilder, ins: Instr) -> list[str]:
    """Each batch-1 constant input of ``cat`` expanded to the batch of the first activation input."""
    ref = next((i for i in ins.inputs if _producer(b, i) not in ("const", "const_f")), None)
    if ref is None:
        raise ExportError(f"layer '{ins.node}': a concatenation of constants only")
    out = []
    for i in ins.inputs:
        if _producer(b, i) in ("const", "const_f"):
            n = b.node("Shape", [ref], name=f"{i}_batch", start=0, end=1)[0]
            rest = b.const(f"{i}_dims", np.array(b.program.tensors[i].shape[1:], np.int64))
            shape = b.node("Concat", [n, rest], name=f"{i}_shape", axis=0)[0]
            i = b.node("Expand", [i, shape], name=f"{i}_expand")[0]
        out.append(i)
    return out


def _cat(style: str):
    """``cat`` for one style: the plain emitter, or Expand the constant inputs to the batch first."""
    plain = {"qdq": qdq_cat, "qoperator": qop_cat, "float": cat_f}[style]

    def f(b: OnnxBuilder, ins: Instr) -> None:
        if not any(_producer(b, i) in ("const", "const_f") for i in ins.inputs):
            plain(b, ins)
            return
        srcs, axis = _expand_batch(b, ins), int(ins.attrs["axis"])
        if style == "float" or all(ins.attrs["same"]):
            b.node("Concat", srcs, ins.output, axis=axis)
        elif style == "qdq":
            y = b.node("Concat", [b.dq(i, s) for i, s in zip(ins.inputs, srcs)], name=ins.output, axis=axis)[0]
            b.quantize_into(y, ins.output)
        else:
            args = [*b.qparams(ins.output)]
            for i, s in zip(ins.inputs, srcs):
                args += [s, *b.qparams(i)]
            qp = b.program.tensors[ins.output].qparams
            out = ins.output if qp.qmin <= -128 and qp.qmax >= 127 else b.fresh(f"{ins.output}_wide")
            b.node("QLinearConcat", args, out, domain=MS_DOMAIN, name=ins.output, axis=axis)
            if out != ins.output:
                b.clip_int(out, ins.output, qp.qmin, qp.qmax)
    return f


register("cat", ("qdq",))(_cat("qdq"))
register("cat", ("qoperator",))(_cat("qoperator"))
register("cat_f")(_cat("float"))
