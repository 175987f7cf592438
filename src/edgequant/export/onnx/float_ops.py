"""Float and dynamic-int8 emitters (fp32, fp16 and dyn8 recipes).

* ``conv_f``/``linear_f``: Conv / Gemm with float32 weights, or float16 weights widened by a
  ``Cast`` that ONNX Runtime folds at load (half the file, fp32 arithmetic as the interpreter).
* ``conv_dyn``/``linear_dyn``: ONNX's own dynamic pattern -- DynamicQuantizeLinear (uint8, range of
  the batch), ConvInteger / MatMulInteger against the int8 weights, then
  ``float(acc) * (s_x * s_w[c]) + bias``. ONNX Runtime fuses the MatMul form into
  DynamicQuantizeMatMul; the interpreter's "onnxruntime" rounding mode computes the same. Per-token
  scales (``dynamic_scale="token"``) and SmoothQuant factors (``in_scale``) are spelled out in
  plain ops (``_dyn_token``, ``_dyn_input``): the interpreter computes those in every mode.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...kernels.conv import w_int
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
def _dyn_input(b: OnnxBuilder, ins: Instr) -> str:
    """The linear's input, times the SmoothQuant factors (``in_scale``) where the layer has them."""
    if "in_scale" not in ins.arrays:
        return ins.inputs[0]
    s = b.const(f"{ins.output}_in_scale", np.asarray(ins.arrays["in_scale"], np.float32), share=False)
    return b.node("Mul", [ins.inputs[0], s], name=f"{ins.output}_smooth")[0]


def _weight_matmul(b: OnnxBuilder, ins: Instr, xq: str, xz: str | None) -> str:
    """int32 ``(xq - xz) @ W_eff^T`` of a (rows, K) uint8 input: one MatMulInteger; with group-wise
    weights (``lowbit/groups.py``: effective weight = 4-bit code x 8-bit group multiplier, |.| <= 1785,
    too wide for int8) two, ``128 * (x @ hi) + (x @ lo)`` with ``W_eff = 128 * hi + lo``, ``lo`` in
    [0, 127], ``hi`` in [-14, 13]: the interpreter's exact integers. The file keeps the 4-bit codes and
    the uint8 multipliers; ``hi``/``lo`` are computed from them by initializer-only nodes, which ONNX
    Runtime folds once when it loads the model."""
    from ...lowbit import groups

    w = ins.arrays["weight"]
    mult = ins.arrays.get(groups.ARRAY)
    zp = [xz] if xz is not None else []
    if mult is None:
        return b.node("MatMulInteger", [xq, b.weight_int8(ins, np.ascontiguousarray(w.T))] + zp, name=ins.output)[0]
    o, k = w.shape
    gs, n_g = int(ins.attrs[groups.ATTR]), mult.shape[1]
    codes = b.node("Cast", [b.weight_int8(ins, np.ascontiguousarray(w.T))], name=f"{ins.output}_codes", to=TensorProto.INT32)[0]
    # the (G, O) uint8 multipliers as stored (one byte per group and channel), widened to one per column
    m = b.const(f"{ins.output}_gmult", np.ascontiguousarray(mult.T.astype(np.uint8)[:, None, :]), share=False)
    m = b.node("Expand", [m, b.const(f"{ins.output}_gexp", np.array([n_g, gs, o], np.int64))], name=f"{ins.output}_gexpand")[0]
    m = b.node("Reshape", [m, b.const(f"{ins.output}_gcols", np.array([n_g * gs, o], np.int64))], name=f"{ins.output}_gcols")[0]
    if n_g * gs != k:
        m = b.node("Slice", [m, b.const("zero_i64", np.array([0], np.int64)), b.const(f"{ins.output}_k", np.array([k], np.int64))],
                   name=f"{ins.output}_gslice")[0]
    m = b.node("Cast", [m], name=f"{ins.output}_gmult32", to=TensorProto.INT32)[0]
    w_eff = b.node("Mul", [codes, m], name=f"{ins.output}_weff")[0]
    c128 = b.const("i32_128", np.array(128, np.int32))
    lo = b.node("Mod", [w_eff, c128], name=f"{ins.output}_wlo32")[0]  # fmod=0: the divisor's sign, [0, 127]
    hi = b.node("Div", [b.node("Sub", [w_eff, lo], name=f"{ins.output}_whi128")[0], c128], name=f"{ins.output}_whi32")[0]
    lo8, hi8 = (b.node("Cast", [t], name=f"{ins.output}_w{n}8", to=TensorProto.INT8)[0] for n, t in (("lo", lo), ("hi", hi)))
    acc_lo = b.node("MatMulInteger", [xq, lo8] + zp, name=f"{ins.output}_acc_lo")[0]
    acc_hi = b.node("MatMulInteger", [xq, hi8] + zp, name=f"{ins.output}_acc_hi")[0]
    return b.node("Add", [b.node("Mul", [acc_hi, c128], name=f"{ins.output}_acc_hi128")[0], acc_lo], name=ins.output)[0]


def _dyn_token(b: OnnxBuilder, ins: Instr, x: str) -> None:
    """Per-row (token) dynamic quantization of a (rows, K) input, spelled out because
    DynamicQuantizeLinear has one scale per tensor: DynamicQuantizeLinear's arithmetic per row
    (``kernels.conv.token_qparams``), u8s8 MatMulInteger on the codes, the per-row zero point taken
    out exactly as ``zp * sum(w)`` in int32, then ``float(acc) * (s_row * s_w[c]) + bias``."""
    o = ins.output
    zero, one, u8max = (b.const(f"{o}_{n}", np.array(v, np.float32)) for n, v in (("zero", 0), ("one", 1), ("u8max", 255)))
    axes = b.const("axes_1", np.array([1], np.int64))
    lo = b.node("Min", [b.node("ReduceMin", [x, axes], name=f"{o}_rmin", keepdims=1)[0], zero], name=f"{o}_lo")[0]
    hi = b.node("Max", [b.node("ReduceMax", [x, axes], name=f"{o}_rmax", keepdims=1)[0], zero], name=f"{o}_hi")[0]
    s = b.node("Div", [b.node("Sub", [hi, lo], name=f"{o}_range")[0], u8max], name=f"{o}_s0")[0]
    s = b.node("Where", [b.node("Greater", [s, zero], name=f"{o}_spos")[0], s, one], name=f"{o}_s")[0]
    zp = b.node("Neg", [b.node("Div", [lo, s], name=f"{o}_los")[0]], name=f"{o}_nlos")[0]
    zp = b.node("Clip", [b.node("Round", [zp], name=f"{o}_zpr")[0], zero, u8max], name=f"{o}_zp")[0]
    v = b.node("Add", [b.node("Round", [b.node("Div", [x, s], name=f"{o}_xs")[0]], name=f"{o}_xr")[0], zp], name=f"{o}_xz")[0]
    xq = b.node("Cast", [b.node("Clip", [v, zero, u8max], name=f"{o}_xc")[0]], name=f"{o}_xq", to=TensorProto.UINT8)[0]
    acc = _weight_matmul(b, ins, xq, None)
    wsum = np.asarray(w_int(ins), np.int64).reshape(ins.arrays["weight"].shape[0], -1).sum(axis=1).astype(np.int32)
    zpi = b.node("Cast", [zp], name=f"{o}_zpi", to=TensorProto.INT32)[0]
    corr = b.node("Mul", [zpi, b.const(f"{o}_wsum", wsum, share=False)], name=f"{o}_zpw")[0]
    accf = b.node("Cast", [b.node("Sub", [acc, corr], name=f"{o}_acc")[0]], name=f"{o}_acc_f", to=TensorProto.FLOAT)[0]
    scale = b.node("Mul", [s, b.const(f"{o}_w_scale", np.asarray(ins.arrays["w_scale"], np.float32), share=False)],
                   name=f"{o}_scale")[0]
    y = b.node("Mul", [accf, scale], name=f"{o}_rescale")[0]
    y = b.node("Add", [y, b.const(f"{o}_b", np.asarray(ins.arrays["bias_f"], np.float32), share=False)], _out(ins),
               name=f"{o}_bias")[0]
    if "act" in ins.attrs:
        _act(b, ins, y)


def _dyn(b: OnnxBuilder, ins: Instr, is_conv: bool) -> None:
    x = _dyn_input(b, ins)
    if ins.attrs.get("dynamic_scale") == "token" and not is_conv:
        _dyn_token(b, ins, x)
        return
    xq, xs, xz = b.node("DynamicQuantizeLinear", [x],
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
        acc = _weight_matmul(b, ins, xq, xz)
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
