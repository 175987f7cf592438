"""16-bit activation tensors (TFLite's 16x8 scheme): int16 containers, symmetric, zero point 0.

Why: per-tensor int8 cannot hold a transformer's residual stream (outlier channels ~100x the
median; bench/RESULTS.md, issue 16). With int16 inputs a GEMM accumulator exceeds int32
(32767 * 127 * K), so, as TFLite's 16x8 kernels do, the accumulator and bias are int64 and the
requantization uses ``multiply_by_quantized_multiplier_64`` (a Q15 multiplier, 64-bit product).
"""
from __future__ import annotations

import numpy as np

from .qmath import QParams

WIDE_BITS = 16
# graph ops whose integer kernels take int16 inputs; lowering refuses int16 into any other op
INT16_INPUT_OPS = frozenset({"linear", "conv", "add", "layernorm", "unary", "reduce", "mean", "reshape", "transpose",
                             "pad", "matmul", "softmax"})
ADD_LEFT_SHIFT_16 = 15  # TFLite add.cc: int16 operands are shifted by 15, not 20 (int32 headroom)


def container_dtype(bits: int) -> type:
    """numpy dtype that holds a ``bits``-wide activation: int8 up to 8 bits, else int16."""
    return np.int8 if bits <= 8 else np.int16


def dtype_name(qp: QParams) -> str:
    """Program dtype name of an integer tensor with qparams ``qp``."""
    return "int8" if qp.bits <= 8 else "int16"


def is_wide(qp: QParams | None) -> bool:
    return qp is not None and qp.bits > 8


def multiply_by_quantized_multiplier_64(x: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier(int64 x, int32 M0, int shift)`` (16x8 conv/FC):
    ``M0`` reduced to Q15 (rounded, saturated at 0x7FFF), ``(x * M15 + 2^(s-1)) >> s`` with
    ``s = 15 - shift`` (ties toward +inf, as TFLite). |x| < 2^47 keeps the product inside int64."""
    m0 = np.asarray(m0, np.int64)
    shift = np.asarray(shift, np.int64)
    reduced = np.where(m0 < 0x7FFF0000, (m0 + (1 << 15)) >> 16, 0x7FFF)
    total = np.int64(15) - shift
    big = total > 62  # tiny multipliers: the result is 0
    total = np.minimum(total, 62)
    y = np.multiply(np.asarray(x, np.int64), reduced)  # one new array, then in place (memory traffic)
    np.add(y, np.int64(1) << (total - 1), out=y)
    np.right_shift(y, total, out=y)
    return np.where(big, 0, y) if np.any(big) else y


def requantize_64(acc: np.ndarray, *, bias: np.ndarray | None, m0: np.ndarray, shift: np.ndarray, zero_point: int,
                  qmin: int, qmax: int, axis: int, out_bits: int) -> np.ndarray:
    """int64 accumulator (+ int64 bias, per channel along ``axis``) -> output container."""
    acc = np.array(acc, dtype=np.int64)  # a copy: updated in place below
    cs = [1] * acc.ndim
    if acc.ndim and (np.size(m0) > 1 or (bias is not None and np.size(bias) > 1)):
        cs[axis % acc.ndim] = -1
    if bias is not None:
        np.add(acc, np.asarray(bias, np.int64).reshape(cs), out=acc)
    y = multiply_by_quantized_multiplier_64(acc, np.asarray(m0).reshape(cs), np.asarray(shift).reshape(cs))
    if zero_point:
        np.add(y, zero_point, out=y)
    return np.clip(y, qmin, qmax, out=y).astype(container_dtype(out_bits))


def wide_tensors(program) -> list[str]:
    """Names of a program's 16-bit tensors (the exporters refuse them by name)."""
    return [t for t, info in program.tensors.items() if info.dtype == "int16"]

