"""The integer program's arithmetic in torch, so the QAT forward computes what the interpreter will.

Plain fake-quant rounds ``y / s_out`` once. The program instead requantizes an int32 accumulator:
with gemmlowp rounding that is SaturatingRoundingDoublingHighMul *then* RoundingDivideByPOT, two
roundings, which at 2-4 bits (small accumulators, M near 0.5) moves a large share of outputs by one
step. Training through the program's exact values lets the network learn around them, and makes
``convert`` agree with the trained module. These are the torch twins (int64, any device) of
``qmath.quantize_multiplier``/``multiply_by_quantized_multiplier``/``requantize`` (the conv/linear
hot path, on the model's device; tests check them bit-exactly against NumPy), and a bridge that
runs the interpreter's own kernel for the other requantizing ops. A 1-bit output is written as
``lower`` writes it: requantized onto its 8-bit carrier, then binarized at the levels' midpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..ir import Graph, Node
from ..kernels import RUN
from ..kernels.context import KernelContext
from ..lower import STATIC, Lowering, act_int_bounds
from ..lowbit.binary_act import binary_threshold, carrier_qparams, is_binary_tensor, lower_binary_output
from ..program import TensorInfo
from .. import qmath
from ..qmath import QParams
from ..recipes import Recipe

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``real`` (float64, >= 0) -> (M0 int64 in [2^30, 2^31), shift int64), as ``qmath``."""
    frac, shift = torch.frexp(real.double())
    m0 = torch.floor(frac * 2.0**31 + 0.5).long()
    shift = shift.long()
    over = m0 == 2**31
    m0 = torch.where(over, m0 // 2, m0)
    shift = torch.where(over, shift + 1, shift)
    zero = (shift < -31) | (real == 0)
    m0 = torch.where(zero, torch.zeros_like(m0), m0)
    shift = torch.where(zero, torch.zeros_like(shift), shift)
    huge = shift > 30
    m0 = torch.where(huge, torch.full_like(m0, INT32_MAX), m0)
    shift = torch.where(huge, torch.full_like(shift, 30), shift)
    return m0, shift


def _div_trunc_pow2(x: torch.Tensor, bits: int) -> torch.Tensor:
    q = torch.abs(x) >> bits
    return torch.where(x < 0, -q, q)


def multiply_by_quantized_multiplier(x: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """TFLite MultiplyByQuantizedMultiplier on int64 tensors holding int32 values."""
    left = torch.clamp(shift, min=0)
    right = torch.clamp(-shift, min=0)
    xs = torch.clamp(x * torch.bitwise_left_shift(torch.ones_like(left), left), INT32_MIN, INT32_MAX)
    overflow = (xs == INT32_MIN) & (m0 == INT32_MIN)
    ab = xs * m0
    nudge = torch.where(ab >= 0, torch.full_like(ab, 1 << 30), torch.full_like(ab, 1 - (1 << 30)))
    hi = torch.where(overflow, torch.full_like(ab, INT32_MAX), _div_trunc_pow2(ab + nudge, 31))
    mask = torch.bitwise_left_shift(torch.ones_like(right), right) - 1
    remainder = hi & mask
    threshold = (mask >> 1) + (hi < 0).long()
    return (hi >> right) + (remainder > threshold).long()


def multiply_by_quantized_multiplier_single(x: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``qmath.multiply_by_quantized_multiplier_single``: one rounding, ties away from zero."""
    total = 31 - shift
    x = torch.clamp(x, INT32_MIN, INT32_MAX)
    q = torch.bitwise_right_shift(torch.abs(x) * m0 + torch.bitwise_left_shift(torch.ones_like(total), total - 1), total)
    return torch.clamp(torch.where(x < 0, -q, q), INT32_MIN, INT32_MAX)


def requantize(acc: torch.Tensor, real: torch.Tensor, real_f32: torch.Tensor, zero_point: int, lo: int, hi: int,
               rounding: str) -> torch.Tensor:
    """int64 accumulator -> int64 output integers: ``clamp(zp + acc * M, lo, hi)`` as the program does.

    ``real`` (float64) and ``real_f32`` (float32) are the multipliers ``lower`` stores,
    broadcastable against ``acc``. ``rounding="single"``: the once-rounded form ``lower`` records
    on sub-8-bit outputs (``OutputGrid.rounding``).
    """
    if rounding == "gemmlowp":
        m0, shift = quantize_multiplier(real)
        y = multiply_by_quantized_multiplier(acc, m0, shift)
    elif rounding == "single":
        m0, shift = quantize_multiplier(real)
        y = multiply_by_quantized_multiplier_single(acc, m0, shift)
    else:  # onnxruntime: float32 multiply, round half to even
        y = torch.round(acc.float() * real_f32.float()).long()
    return torch.clamp(y + zero_point, lo, hi)


@dataclass(frozen=True)
class OutputGrid:
    """Where a requantizing instruction writes: scale, zero point and clamp bounds; for a 1-bit
    tensor, the 8-bit carrier ``lower`` gives it and the ``binarize`` threshold that follows."""

    scale: float
    zero_point: int
    lo: int
    hi: int
    binary: QParams | None = None
    threshold: int = 0
    single: bool = False  # the program requantizes into this grid with single rounding (sub-8-bit)

    @staticmethod
    def of(qp: QParams, act) -> "OutputGrid":
        binary = qp if is_binary_tensor(qp) else None
        if binary is not None:
            qp = carrier_qparams(binary)
        b = act_int_bounds(act, qp)
        return OutputGrid(float(np.float32(qp.scale)), int(qp.zero_point), b.get("act_min", qp.qmin), b.get("act_max", qp.qmax),
                          binary, binary_threshold(binary, qp) if binary is not None else 0,
                          qmath.requant_rounding(qp.bits) == "single")

    def rounding(self, mode: str) -> str:
        """The requantization the program does into this grid in run mode ``mode``
        (``KernelContext.requant_rounding``)."""
        return "single" if mode == "gemmlowp" and self.single else mode

    def value(self, q: torch.Tensor) -> torch.Tensor:
        """Output integers (int64) -> the real values the program's tensor holds (float32)."""
        if self.binary is None:
            return (q - self.zero_point).float() * self.scale
        b = torch.where(q >= self.threshold, 1, -1)
        return (b - int(self.binary.zero_point)).float() * float(np.float32(self.binary.scale))


def to_int(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Real values already on a grid -> their integers (int64)."""
    return torch.round(x.detach().double() / scale).long() + zero_point


def run_program_op(graph: Graph, node: Node, recipe: Recipe, inputs: list[tuple[torch.Tensor, QParams]],
                   out_qp: QParams | None, rounding: str) -> torch.Tensor:
    """Lower one node with the current qparams and run the interpreter's own kernel on it.

    For the ops whose integer arithmetic is intricate and mode-specific (add, cat, mean, average
    pooling -- TFLite's shifted add, ONNX Runtime's QLinear* forms) the QAT forward takes its
    value from the reference kernel itself rather than from a copy of it. Returns int64 on the
    inputs' device.
    """
    act_qp = {node.name: out_qp} if out_qp is not None else {}
    low = Lowering(graph, recipe, act_qp)
    arrays = []
    for name, (q, qp) in zip(node.inputs, inputs):
        a = q.detach().cpu().numpy().astype(np.int8)
        low.tensors[name] = TensorInfo("int8", tuple(a.shape), qp)
        low.where[name] = name
        arrays.append(a)
    if is_binary_tensor(out_qp):  # 8-bit carrier, then binarize, as lower emits it
        lower_binary_output(low, node, STATIC[node.op])
    else:
        STATIC[node.op](low, node)
    env = dict(zip(node.inputs, arrays))
    ctx = KernelContext(rounding, low.tensors)
    for instr in low.instrs:
        env[instr.output] = RUN[instr.op](instr, [env[i] for i in instr.inputs], ctx)
    return torch.from_numpy(np.asarray(env[low.instrs[-1].output]).astype(np.int64)).to(inputs[0][0].device)
