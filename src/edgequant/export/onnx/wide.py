"""ONNX forms of a conv or linear with a 16-bit (act16) input or output: the exact integer accumulator.

Why not ``DQ -> Conv -> Q``: ONNX Runtime has no int16 convolution and no float64 Conv, and a float32
convolution of dequantized values rounds its sums differently in each runtime -- one LSB here and
there, which the fine 16-bit grids of later layers amplify (``kernels.wide_ort``). So the file
computes what the interpreter's int16 accumulator computes (``kernels.conv._int16_accumulate``):

* the input's integers (minus the zero point: 0 for int16) split into bytes, ``x = 256 * hi + lo`` (``lo = x mod 256`` in [0, 255],
  ``hi`` in [-128, 127]), each as float32 holding exact integers;
* ``Conv`` of each against the integer weights (``DequantizeLinear`` with scale 1: exact), one per
  input-channel range of ``kernels.conv.byte_split_slices`` so that every float32 partial sum stays
  below 2^24, in any summation order;
* the partial sums cast to float64 and combined, ``acc = 256 * hi_acc + lo_acc`` (exact below 2^53);
* ``float32((acc + b_q) * float64(s_in * s_w[c]))`` then QuantizeLinear (``wide_ort.rescale``).

Costs two float32 convolutions instead of one; bit-exact with ``q.run(rounding="onnxruntime")``.
A linear does the same with two ``MatMulInteger`` (uint8 bytes x int8 weights, exact int32): ONNX
Runtime's u8s8 GEMM, faster than a float32 one and exact without input-channel ranges.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...errors import ExportError
from ...kernels.conv import byte_split_slices
from ...kernels.wide_ort import conv_scale
from ...program import Instr
from .core import OnnxBuilder, conv_attrs, conv_weight


def _bytes(b: OnnxBuilder, ins: Instr) -> tuple[str, str]:
    """int32 tensors (hi, lo) with ``x - z = 256 * hi + lo``, lo in [0, 255], hi in [-128, 127]."""
    x, out = ins.inputs[0], ins.output
    xi = b.node("Cast", [x], name=f"{out}_i32", to=TensorProto.INT32)[0]
    zx = b.encode(int(b.program.tensors[x].qparams.zero_point), x)
    if zx:  # an 8-bit input: centred (|x - z| <= 255); padding with 0 is then the real zero
        xi = b.node("Sub", [xi, b.const(f"{x}_zp_i32", np.int32(zx))], name=f"{out}_centre")[0]
    c256 = b.const("i32_256", np.int32(256))
    lo = b.node("Mod", [xi, c256], name=f"{out}_lo", fmod=0)[0]  # in [0, 255]: the sign follows the divisor
    hi = b.node("Div", [b.node("Sub", [xi, lo], name=f"{out}_hi256")[0], c256], name=f"{out}_hi")[0]  # exact
    return hi, lo


def _rescale(b: OnnxBuilder, ins: Instr, hi_acc: str, lo_acc: str, cs: tuple[int, ...]) -> None:
    """``acc = 256 * hi_acc + lo_acc`` (float64), ``float32((acc + b_q) * s_in * s_w[c])`` -> Q."""
    out = ins.output
    acc = b.node("Mul", [hi_acc, b.const("f64_256", np.float64(256.0))], name=f"{out}_hi_scaled")[0]
    acc = b.node("Add", [acc, lo_acc], name=f"{out}_acc")[0]
    if "bias" in ins.arrays:
        acc = b.node("Add", [acc, b.const(f"{out}_bias_q", ins.arrays["bias"].astype(np.float64).reshape(cs), share=False)],
                     name=f"{out}_bias")[0]
    s = b.const(f"{out}_rescale", conv_scale(ins, b.program.tensors[ins.inputs[0]].qparams.scale).reshape(cs), share=False)
    y = b.node("Cast", [b.node("Mul", [acc, s], name=f"{out}_rescale")[0]], name=f"{out}_f32", to=TensorProto.FLOAT)[0]
    b.quantize_into(y, out, *b.out_bounds(ins))


def linear(b: OnnxBuilder, ins: Instr) -> None:
    """A 16-bit linear on (rows, I): ``MatMulInteger`` of each input byte (uint8; ``hi`` shifted by
    128 with zero point 128) against the int8 weights -- exact int32 sums on ONNX Runtime's u8s8
    GEMM, its fast path -- then the float64 rescale (the QDQ linear emitter calls it)."""
    out = ins.output
    hi, lo = _bytes(b, ins)
    hi = b.node("Add", [hi, b.const("i32_128", np.int32(128))], name=f"{out}_hi_u")[0]
    w_t = b.const(f"{out}_wT", np.ascontiguousarray(ins.arrays["weight"].T), share=False)  # (I, O) int8
    accs = []
    for tag, part, zp in (("hi", hi, [b.const("u8_128", np.uint8(128))]), ("lo", lo, [])):
        u8 = b.node("Cast", [part], name=f"{out}_{tag}_u8", to=TensorProto.UINT8)[0]
        acc = b.node("MatMulInteger", [u8, w_t, *zp], name=f"{out}_{tag}")[0]
        accs.append(b.node("Cast", [acc], name=f"{out}_{tag}_f64", to=TensorProto.DOUBLE)[0])
    _rescale(b, ins, accs[0], accs[1], (-1,))


def conv(b: OnnxBuilder, ins: Instr) -> None:
    """Write the 16-bit conv ``ins`` (see the module docstring); the QDQ conv emitter calls it."""
    out = ins.output
    slices = byte_split_slices(ins)
    if slices is None:
        raise ExportError(f"layer '{ins.node}': its weights are too large for an exact float32 convolution of "
                          "16-bit inputs split into bytes (a grouped conv with sum|w| * 255 >= 2^24 per output); "
                          "run it with the interpreter (q.run) or quantize that layer with 8-bit activations")
    w = conv_weight(ins, ins.arrays["weight"])
    attrs = conv_attrs(ins)
    hi, lo = _bytes(b, ins)
    one = b.const("w_unit_scale", np.float32(1.0))
    grouped = int(ins.attrs.get("groups", 1)) != 1
    parts = []
    for tag, part in (("hi", hi), ("lo", lo)):
        pf = b.node("Cast", [part], name=f"{out}_{tag}_f", to=TensorProto.FLOAT)[0]
        acc = None
        for k, (c0, c1) in enumerate(slices):
            whole = (c0, c1) == (0, w.shape[1])
            xs = pf if whole or grouped else b.node(
                "Slice", [pf, b.const("slice_start", np.array([c0], np.int64)), b.const("slice_end", np.array([c1], np.int64)),
                          b.const("slice_axis", np.array([1], np.int64))], name=f"{out}_{tag}_c{k}")[0]
            wk = b.node("DequantizeLinear", [b.const(f"{out}_w{k}", np.ascontiguousarray(w[:, c0:c1]), share=False), one],
                        name=f"{out}_w{k}_int")[0]
            y = b.node("Conv", [xs, wk], name=f"{out}_{tag}{k}", **attrs)[0]
            y = b.node("Cast", [y], name=f"{out}_{tag}{k}_f64", to=TensorProto.DOUBLE)[0]
            acc = y if acc is None else b.node("Add", [acc, y], name=f"{out}_{tag}_sum{k}")[0]
        parts.append(acc)
    _rescale(b, ins, parts[0], parts[1], (-1,) + (1,) * (w.ndim - 2))  # per output channel over (N, C_out, ...)
