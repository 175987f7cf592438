"""ONNX emitters for the transformer ops, and Linear on (N, ..., features) inputs.

QDQ forms, chosen for what ONNX Runtime fuses:

* ``matmul``: ``DQ(a), DQ(b) -> MatMul -> Q`` (ORT: QLinearMatMul). A folded constant ``alpha``
  (attention's 1/sqrt(d)) rides on a's DequantizeLinear scale ``float32(s_a * alpha)``.
* ``softmax``: ``DQ -> Softmax(axis=-1) -> Q`` (ORT: QLinearSoftmax, com.microsoft).
* ``layernorm``: ``DQ -> Cast(float64) -> LayerNormalization(axis=-1) -> Cast(float32) -> Q`` at every
  width (ORT has no quantized LayerNorm; in float64 the result rounds to the same float32 in ORT and
  in the interpreter's onnxruntime mode, where float32 sums flipped single LSBs).
* ``transpose``: Transpose on the 8-bit tensor itself (no Q/DQ; bit-exact by construction).
* Linear on a rank > 2 input (any style): Reshape the 8-bit input to (rows, features), the 2-D
  emitter (QDQ Gemm, which ORT fuses to QGemm with the int32 bias), Reshape back (``core.rows``;
  the Linear emitters register with ``nd_rows=True``).

The QOperator style uses these QDQ forms too (ORT fuses them the same way).
"""
from __future__ import annotations

import numpy as np

from ...lower.transformer import matmul_scale_f32
from ...program import Instr
from .core import OnnxBuilder, register


@register("matmul")
def matmul(b: OnnxBuilder, ins: Instr) -> None:
    a, c = ins.inputs
    alpha = float(ins.attrs.get("alpha", 1.0))
    if alpha == 1.0:
        da = b.dq(a)
    else:
        s = b.const(f"{a}_scale_alpha", matmul_scale_f32(b.program.tensors[a].qparams.scale, alpha))
        da = b.node("DequantizeLinear", [a, s, b.qparams(a)[1]], name=f"{a}_dq")[0]
    y = b.node("MatMul", [b.to_compute(ins, da), b.to_compute(ins, b.dq(c))], name=ins.output)[0]
    b.quantize_into(b.from_compute(ins, y), ins.output, *b.out_bounds(ins))


@register("softmax")
def softmax(b: OnnxBuilder, ins: Instr) -> None:
    y = b.node("Softmax", [b.to_compute(ins, b.dq(ins.inputs[0]))], name=ins.output, axis=-1)[0]
    b.quantize_into(b.from_compute(ins, y), ins.output)


def _layernorm(b: OnnxBuilder, ins: Instr, x: str, out: str | None) -> str:
    g = b.compute_const(ins, f"{ins.output}_gamma", ins.arrays["gamma_f"].astype(np.float32))
    beta = b.compute_const(ins, f"{ins.output}_beta", ins.arrays["beta_f"].astype(np.float32))
    return b.node("LayerNormalization", [x, g, beta], out, name=ins.output, axis=-1,
                  epsilon=float(ins.attrs["eps"]))[0]


@register("layernorm")
def layernorm(b: OnnxBuilder, ins: Instr) -> None:
    y = _layernorm(b, ins, b.to_compute(ins, b.dq(ins.inputs[0])), None)
    b.quantize_into(b.from_compute(ins, y), ins.output)


@register("transpose")
def transpose(b: OnnxBuilder, ins: Instr) -> None:
    b.node("Transpose", [ins.inputs[0]], ins.output, perm=[int(p) for p in ins.attrs["perm"]])


@register("matmul_f")
def matmul_f(b: OnnxBuilder, ins: Instr) -> None:
    alpha = float(ins.attrs.get("alpha", 1.0))
    if alpha == 1.0:
        b.node("MatMul", list(ins.inputs), ins.output, name=ins.output)
        return
    y = b.node("MatMul", list(ins.inputs), name=ins.output)[0]
    b.node("Mul", [y, b.const("alpha", np.float32(alpha))], ins.output, name=f"{ins.output}_alpha")


@register("softmax_f")
def softmax_f(b: OnnxBuilder, ins: Instr) -> None:
    b.node("Softmax", [ins.inputs[0]], ins.output, name=ins.output, axis=-1)


@register("layernorm_f")
def layernorm_f(b: OnnxBuilder, ins: Instr) -> None:
    _layernorm(b, ins, ins.inputs[0], ins.output)
