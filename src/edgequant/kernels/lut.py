"""Element-wise nonlinearities on integer tensors as lookup tables (``unary``), and their float twin.

DESIGN.md: "other element-wise nonlinearities on 8-bit tensors are 256-entry lookup tables". The
table is built once, at lowering, from the function's float definition (``edgequant.unary``): every
one of the 2^bits input codes (65536 for a 16-bit input: a direct table, exact, 64-128 KiB) is dequantized, the function applied, and the result quantized to the
output qparams. The kernel is then a pure table lookup -- no float at run time, and any function
costs the same.

Two tables ride on each instruction, one per rounding mode of the interpreter:

* ``table`` (gemmlowp mode) -- float64 definition, round half away: exactly what the fake-quant
  twin computes (``ctx.fq`` of the float64 function of the dequantized input), so run and
  simulate agree on every code.
* ``table_ort`` (onnxruntime mode) -- DequantizeLinear in float32, the function in float32,
  QuantizeLinear (divide by the float32 scale, round half to even): what ONNX Runtime computes
  for ``DQ -> f -> Q`` (and what its fused QLinearSigmoid/QLinearLeakyRelu tables hold).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import qmath
from ..errors import InputError
from ..qmath import QParams
from ..unary import apply
from ..wide import container_dtype
from . import RUN, SIM, native, register
from .context import KernelContext


def build_table(fn: str, attrs: dict, qx: QParams, qy: QParams, rounding: str = "gemmlowp") -> np.ndarray:
    """Table (int8, or int16 for a 16-bit output) over the input codes ``qx.qmin .. qx.qmax``: entry ``k`` is the output code of
    input code ``qx.qmin + k``."""
    codes = np.arange(int(qx.qmin), int(qx.qmax) + 1, dtype=np.int64) - int(qx.zero_point)
    if rounding == "gemmlowp":
        x = torch.as_tensor(codes, dtype=torch.float64) * float(qx.scale)
        v = (apply(fn, attrs, x) / float(qy.scale)).numpy()
        r = qmath.round_half_away(v)
    else:
        x = torch.as_tensor(codes.astype(np.float32) * np.float32(qx.scale))
        y = apply(fn, attrs, x).to(torch.float32).numpy()
        r = np.rint(y / np.float32(qy.scale)).astype(np.float64)
    return np.clip(r + int(qy.zero_point), qy.qmin, qy.qmax).astype(container_dtype(qy.bits))


@register("lut", RUN)
def lut_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    x = inputs[0]
    table = instr.arrays["table" if ctx.rounding == "gemmlowp" else "table_ort"]
    lo = int(instr.attrs["in_qmin"])
    out, bad = native.lut(x, table, lo)
    if out is not None and bad < 0:
        return out
    if x.size and (int(x.min()) < lo or int(x.max()) >= lo + table.shape[0]):
        raise InputError(f"lut '{instr.node}': input integers [{int(x.min())}, {int(x.max())}] fall outside the "
                         f"table's codes [{lo}, {lo + table.shape[0] - 1}]; the program is inconsistent")
    return table[x.astype(np.int64) - lo]


@register("lut", SIM)
def lut_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    return ctx.fq(apply(instr.attrs["fn"], instr.attrs, inputs[0]), instr.output)


@register("unary_f", RUN)
def unary_f_run(instr, inputs, ctx) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(inputs[0], np.float32))
    return apply(instr.attrs["fn"], instr.attrs, x).numpy().astype(np.float32)


@register("unary_f", SIM)
def unary_f_sim(instr, inputs, ctx) -> torch.Tensor:
    return apply(instr.attrs["fn"], instr.attrs, inputs[0])
