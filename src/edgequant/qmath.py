"""Quantization math as pure functions: qparams, (de)quantize, fake-quantize, requantize.

Conventions (TFLite int8 spec, Jacob et al. 2018): ``real = scale * (q - zero_point)``; zero is
exactly representable; weights symmetric with narrow range; requantization by an int32 Q31
multiplier and a power-of-two shift. Rounding is always an explicit mode:

* ``"gemmlowp"`` -- SaturatingRoundingDoublingHighMul then RoundingDivideByPOT (TFLite/LiteRT).
* ``"onnxruntime"`` -- float32 multiply then round-half-even (ONNX Runtime's MLAS requantize).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .errors import RecipeError

Rounding = Literal["gemmlowp", "onnxruntime"]
ROUNDING_MODES: tuple[str, ...] = ("gemmlowp", "onnxruntime")

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def check_rounding(mode: str) -> str:
    if mode not in ROUNDING_MODES:
        raise RecipeError(f"unknown rounding mode {mode!r}; use one of {ROUNDING_MODES}")
    return mode


def qrange(bits: int, signed: bool = True, narrow: bool = False) -> tuple[int, int]:
    """Integer range of a ``bits``-wide container, e.g. (-128, 127) or narrow (-127, 127)."""
    if not 1 <= bits <= 16:
        raise RecipeError(f"bit width {bits} is not supported; use 1..16")
    if bits == 1:  # binary: the two values are -1 and +1 (XNOR-Net), represented as -1/1
        return (-1, 1) if signed else (0, 1)
    if signed:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return (lo + 1 if narrow else lo), hi
    return (1 if narrow else 0), 2**bits - 1


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor.

    ``scale``/``zero_point`` are scalars (per tensor) or 1-D arrays along ``axis`` (per channel).
    Stored as float32 / int32 because that is what runtimes store; arithmetic that must be exact
    converts explicitly.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    bits: int = 8
    signed: bool = True
    narrow: bool = False
    axis: int | None = None

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed, self.narrow)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed, self.narrow)[1]

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def broadcast(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """Scale and zero point reshaped to broadcast against an ``ndim`` tensor."""
        if self.axis is None:
            return self.scale, self.zero_point
        shape = [1] * ndim
        shape[self.axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)

    def to_dict(self) -> dict:
        return {
            "scale": np.asarray(self.scale, np.float32).reshape(-1).tolist(),
            "zero_point": np.asarray(self.zero_point, np.int32).reshape(-1).tolist(),
            "bits": self.bits,
            "signed": self.signed,
            "narrow": self.narrow,
            "axis": self.axis,
        }

    @staticmethod
    def from_dict(d: dict) -> "QParams":
        scale = np.asarray(d["scale"], np.float32)
        zp = np.asarray(d["zero_point"], np.int32)
        if d.get("axis") is None:
            scale, zp = scale.reshape(()), zp.reshape(())
        return QParams(scale, zp, int(d["bits"]), bool(d["signed"]), bool(d["narrow"]), d.get("axis"))


def compute_qparams(
    lo: np.ndarray | float,
    hi: np.ndarray | float,
    bits: int = 8,
    signed: bool = True,
    symmetric: bool = False,
    narrow: bool = False,
    axis: int | None = None,
) -> QParams:
    """Scale and nudged zero point for the real range [lo, hi] (arrays give per-channel qparams).

    The range is widened to contain 0 so that zero (padding, ReLU) is exact. A degenerate range
    (all zeros) gets scale 1 rather than a division by zero.
    """
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise RecipeError(f"cannot compute qparams of a non-finite range [{lo}, {hi}]")
    qmin, qmax = qrange(bits, signed, narrow)
    if symmetric:
        amax = np.maximum(-lo, hi)
        if signed:
            scale = amax / max(qmax, 1)
            zp = np.zeros_like(scale)
        else:  # unsigned symmetric only makes sense for non-negative data: zp at qmin
            scale = hi / (qmax - qmin)
            zp = np.full_like(scale, qmin)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.round(qmin - lo / safe), qmin, qmax)
    scale = np.where(scale > 0, scale, 1.0)
    scale = scale.astype(np.float32)
    # float32 rounding of the scale must not push the range past the container
    zp = zp.astype(np.int32)
    if axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    return QParams(scale, zp, bits, signed, narrow, axis)


def quantize(x: np.ndarray, qp: QParams, rounding: str = "half_even") -> np.ndarray:
    """Real -> integer (int32 container), clamped to the qparams' range."""
    s, z = qp.broadcast(np.ndim(x))
    v = np.asarray(x, np.float64) / np.asarray(s, np.float64)
    r = round_half_away(v) if rounding == "half_away" else np.rint(v)
    return np.clip(r + z, qp.qmin, qp.qmax).astype(np.int32)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """Integer -> real, float32 (as runtimes do)."""
    s, z = qp.broadcast(np.ndim(q))
    return ((np.asarray(q, np.int64) - z).astype(np.float32) * s).astype(np.float32)


def round_half_away(x):
    """Round to nearest, ties away from zero (gemmlowp, C ``round``). NumPy or torch."""
    if isinstance(x, torch.Tensor):
        return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | float,
    qmin: int | torch.Tensor,
    qmax: int | torch.Tensor,
    half_away: bool = False,
) -> torch.Tensor:
    """Quantize-dequantize in float with a straight-through gradient (clipped to the range).

    Forward: ``(clamp(round(x/s)+z, qmin, qmax) - z) * s``. Backward: identity where ``x`` maps
    inside [qmin, qmax], zero outside (Jacob et al.; whitepaper arXiv 1806.08342).
    """
    v = x / scale
    r = round_half_away(v) if half_away else torch.round(v)
    q = r + zero_point
    inside = (q >= qmin) & (q <= qmax)
    out = (torch.clamp(q, qmin, qmax) - zero_point) * scale
    ste = x + (out - x).detach()
    return torch.where(inside, ste, out.detach())


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Split ``real`` (> 0) into ``M0`` (int32, Q31, in [2^30, 2^31)) and ``shift`` so that
    ``real ~= M0 * 2^(shift - 31)`` (TFLite ``QuantizeMultiplier``).
    """
    real = np.asarray(real, np.float64)
    if np.any(~np.isfinite(real)) or np.any(real < 0):
        raise RecipeError(f"requantization multiplier must be finite and >= 0, got {real}")
    frac, shift = np.frexp(real)
    m0 = np.round(frac * (1 << 31)).astype(np.int64)
    over = m0 == (1 << 31)
    m0 = np.where(over, m0 // 2, m0)
    shift = np.where(over, shift + 1, shift).astype(np.int64)
    tiny = shift < -31
    m0 = np.where(tiny | (real == 0), 0, m0)
    shift = np.where(tiny | (real == 0), 0, shift)
    return m0.astype(np.int32), shift.astype(np.int32)


def _div_trunc_pow2(x: np.ndarray, bits: int) -> np.ndarray:
    """C-style integer division by 2**bits (truncate toward zero), int64."""
    d = np.int64(1) << np.int64(bits)
    q = np.abs(x) // d
    return np.where(x < 0, -q, q)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held in int64."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    res = _div_trunc_pow2(ab + nudge, 31)
    return np.where(overflow, INT32_MAX, res)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: divide by 2**exponent, ties away from zero."""
    x = np.asarray(x, np.int64)
    e = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def multiply_by_quantized_multiplier(x: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier: ``x * M0 * 2^(shift-31)`` in integer arithmetic."""
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    xs = np.asarray(x, np.int64) * (np.int64(1) << left)
    xs = np.clip(xs, INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(xs, m0), right)


def requantize(
    acc: np.ndarray,
    *,
    m0: np.ndarray,
    shift: np.ndarray,
    real_multiplier: np.ndarray,
    zero_point: int | np.ndarray,
    qmin: int,
    qmax: int,
    rounding: str = "gemmlowp",
) -> np.ndarray:
    """int32 accumulator -> output integers: ``clamp(zp + acc * M, qmin, qmax)``.

    ``gemmlowp`` uses (m0, shift); ``onnxruntime`` multiplies in float32 by ``real_multiplier``
    and rounds half to even, exactly as MLAS does.
    """
    if rounding == "gemmlowp":
        y = multiply_by_quantized_multiplier(acc, m0, shift)
    elif rounding == "onnxruntime":
        y = np.rint(np.asarray(acc).astype(np.float32) * np.asarray(real_multiplier, np.float32))
        y = y.astype(np.int64)
    else:
        check_rounding(rounding)
    return np.clip(y + np.asarray(zero_point, np.int64), qmin, qmax).astype(np.int32)
