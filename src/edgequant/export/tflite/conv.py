"""TFLite emitters for convolution and linear layers: CONV_2D / DEPTHWISE_CONV_2D and
FULLY_CONNECTED (or a 1x1 CONV_2D, ``linear="conv"``), int8 per-channel weights (packed INT4 for
<= 4-bit) with int32 bias, the fp32 forms for the float baseline.

16x8 (int16 input, ``attrs["acc64"]``): the same operators with an int64 bias; LiteRT then runs
``reference_integer_ops::ConvPerChannel`` / ``DepthwiseConvPerChannel`` / ``FullyConnected`` on
int16 (int64 accumulator, 64-bit ``MultiplyByQuantizedMultiplier``), in its optimized resolver too
(an int64 bias selects the reference kernel there), which is ``wide.requantize_64``. The
``linear="fully_connected"`` form is within 1 LSB, not exact: LiteRT's 16x8 FULLY_CONNECTED
requantizes in one rounding with the full Q31 multiplier (as its int8 one rounds once).
"""
from __future__ import annotations

import numpy as np

from ...errors import ExportError
from ...program import Instr
from .builder import ACTIVATIONS, PADDING, Quant
from .core import Emitter, finish_act, register


def _weights(e: Emitter, ins: Instr, w: np.ndarray, axis: int) -> int:
    """int8 per-channel weight tensor, zero points 0; <= 4-bit weights (binary and ternary too:
    their integers are -1/0/+1 with a per-channel scale) as packed INT4, which LiteRT's CONV_2D,
    DEPTHWISE_CONV_2D and FULLY_CONNECTED unpack to int8 before the same integer GEMM."""
    bits = int(ins.attrs.get("weight_bits", 8))
    scale = ins.arrays["w_scale"].astype(np.float32)
    # 16x8 kernels take int8 filters only (no INT4 unpacking on the int16 path)
    dtype = "int4" if bits <= 4 and not ins.attrs.get("acc64") else "int8"
    return e.m.const(f"{ins.output}/weight", w, dtype, Quant(scale, np.zeros(scale.size, np.int64), axis))


def _bias(e: Emitter, ins: Instr) -> int:
    s_in = np.float32(e.p.tensors[ins.inputs[0]].qparams.scale)
    scale = (s_in * ins.arrays["w_scale"].astype(np.float32)).astype(np.float32)
    dtype = "int64" if ins.attrs.get("acc64") else "int32"  # 16x8: int64 bias, as the interpreter adds it
    return e.m.const(f"{ins.output}/bias", ins.arrays["bias"].astype(dtype), dtype,
                     Quant(scale, np.zeros(scale.size, np.int64), 0))


@register("conv", "conv_f")
def _conv(e: Emitter, ins: Instr) -> None:
    a = ins.attrs
    if a.get("dims", 2) != 2:
        raise ExportError(f"layer '{ins.node}': 1-D convolution has no TFLite export yet (only 2-D CONV_2D)")
    integer = ins.op == "conv"
    name_in = ins.inputs[0]
    x = e.get(name_in, "nhwc")
    w = ins.arrays["weight"]
    o, cg, kh, kw = w.shape
    c_in = e.shape(name_in)[1]
    groups = int(a["groups"])
    kernel, stride, dil = (kh, kw), tuple(a["stride"]), tuple(a["dilation"])
    pad_value = int(e.p.tensors[name_in].qparams.zero_point) if integer else 0.0
    padding, x = e.window_padding(ins, name_in, x, kernel, stride, dil, a["padding"], pad_value)
    act, clamp = e.fused_act(ins) if integer else e.float_act(ins)
    depthwise = groups > 1 and groups == c_in and cg == 1
    if groups > 1 and not depthwise:
        raise ExportError(f"layer '{ins.node}': grouped convolution (groups={groups}, {c_in} input channels) has no "
                          "TFLite kernel; only groups=1 and depthwise (groups == input channels) export")
    if depthwise:
        wt = w.transpose(1, 2, 3, 0)  # (1, kh, kw, O)
        op, qaxis = "DEPTHWISE_CONV_2D", 3
        opts = dict(Padding=PADDING[padding], StrideW=stride[1], StrideH=stride[0], DepthMultiplier=o // c_in,
                    FusedActivationFunction=ACTIVATIONS[act], DilationWFactor=dil[1], DilationHFactor=dil[0])
    else:
        wt = w.transpose(0, 2, 3, 1)  # OHWI
        op, qaxis = "CONV_2D", 0
        opts = dict(Padding=PADDING[padding], StrideW=stride[1], StrideH=stride[0],
                    FusedActivationFunction=ACTIVATIONS[act], DilationWFactor=dil[1], DilationHFactor=dil[0])
    if integer:
        wi, bi = _weights(e, ins, wt, qaxis), _bias(e, ins)
    else:
        wi = e.m.const(f"{ins.output}/weight", wt.astype(np.float32))
        bi = e.m.const(f"{ins.output}/bias", ins.arrays["bias"].astype(np.float32))
    out = e.define(ins.output, "nhwc")
    raw = out if clamp is None else e.new(f"{ins.output}/preact", e.m.tensors[out].shape, like=ins.output)
    e.m.op(op, [x, wi, bi], [raw], **opts)
    finish_act(e, ins, raw, out, clamp, integer)


@register("linear", "linear_f")
def _linear(e: Emitter, ins: Instr) -> None:
    integer = ins.op == "linear"
    name_in = ins.inputs[0]
    x = e.get(name_in, "nchw")
    act, clamp = e.fused_act(ins) if integer else e.float_act(ins)
    w = ins.arrays["weight"]
    o, i = w.shape
    as_conv = integer and e.linear == "conv"
    if integer:
        wi, bi = _weights(e, ins, w.reshape(o, 1, 1, i) if as_conv else w, 0), _bias(e, ins)
    else:
        wi = e.m.const(f"{ins.output}/weight", w.astype(np.float32))
        bi = e.m.const(f"{ins.output}/bias", ins.arrays["bias"].astype(np.float32))
    out = e.define(ins.output, "nchw")
    out_shape = e.m.tensors[out].shape
    raw = out if clamp is None else e.new(f"{ins.output}/preact", out_shape, like=ins.output)
    if as_conv:
        # LiteRT's FULLY_CONNECTED int8 kernel requantizes with a single rounding while CONV_2D (and
        # the interpreter) use gemmlowp's two; a 1x1 CONV_2D keeps the program's arithmetic exactly
        rows = int(np.prod(e.shape(name_in)[:-1]))
        x4 = e.new(f"{ins.output}/in4d", (rows, 1, 1, i), like=name_in)
        shp = e.m.const(f"{ins.output}/in4d_shape", np.array([-1, 1, 1, i], np.int32))
        e.m.op("RESHAPE", [x, shp], [x4], NewShape=[-1, 1, 1, i])
        y4 = e.new(f"{ins.output}/out4d", (rows, 1, 1, o), like=ins.output)
        e.m.op("CONV_2D", [x4, wi, bi], [y4], Padding=PADDING["VALID"], StrideW=1, StrideH=1,
               FusedActivationFunction=ACTIVATIONS[act], DilationWFactor=1, DilationHFactor=1)
        new_shape = [-1] + list(out_shape[1:])
        shp = e.m.const(f"{ins.output}/shape", np.array(new_shape, np.int32))
        e.m.op("RESHAPE", [y4, shp], [raw], NewShape=new_shape)
    else:
        e.m.op("FULLY_CONNECTED", [x, wi, bi], [raw], FusedActivationFunction=ACTIVATIONS[act],
               KeepNumDims=len(e.shape(name_in)) > 2)
    finish_act(e, ins, raw, out, clamp, integer)
