"""Quantization math as pure functions: qparams, (de)quantize, fake-quantize, requantize.

Conventions (TFLite int8 spec, Jacob et al. 2018): ``real = scale * (q - zero_point)``; zero is
exactly representable; weights symmetric with narrow range; requantization by an int32 Q31
multiplier and a power-of-two shift. Rounding is always an explicit mode:

* ``"gemmlowp"`` -- SaturatingRoundingDoublingHighMul then RoundingDivideByPOT (TFLite/LiteRT).
* ``"onnxruntime"`` -- float32 multiply then round-half-even (ONNX Runtime's MLAS requantize).

Inside the gemmlowp mode an instruction may ask for ``"single"`` rounding (``requantize``'s
``rounding="single"``): TFLite's ``TFLITE_SINGLE_ROUNDING`` form, one rounding of the exact int64
product. ``lower`` records it on requantizations whose output is narrower than 8 bits, where the
double rounding moves a few percent of outputs by a whole step (see ``requant_rounding``).
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
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0))  # a range below ~1e-45 underflows float32
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
    # floor(|x| + 0.5) is wrong where the addition itself rounds (0.5 - ulp, odd x above 2^52);
    # a tie is detected exactly from the fractional part instead
    if isinstance(x, torch.Tensor):
        t = torch.trunc(x)
        return torch.where(torch.abs(x - t) == 0.5, t + torch.sign(x), torch.round(x))
    t = np.trunc(x)
    return np.where(np.abs(x - t) == 0.5, t + np.sign(x), np.rint(x))


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
    m0 = np.floor(frac * (1 << 31) + 0.5).astype(np.int64)  # TfLiteRound: half away (exact here)
    over = m0 == (1 << 31)
    m0 = np.where(over, m0 // 2, m0)
    shift = np.where(over, shift + 1, shift).astype(np.int64)
    tiny = shift < -31
    m0 = np.where(tiny | (real == 0), 0, m0)
    shift = np.where(tiny | (real == 0), 0, shift)
    huge = shift > 30  # TFLite saturates; also keeps x << shift inside int64
    m0 = np.where(huge, (1 << 31) - 1, m0)
    shift = np.where(huge, 30, shift)
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


def multiply_by_quantized_multiplier_single(x: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``x * M0 * 2^(shift-31)`` rounded once: TFLite's ``TFLITE_SINGLE_ROUNDING`` form
    ``(x * M0 + 2^(s-1)) >> s`` with ``s = 31 - shift``, computed on ``|x|`` so that ties go away
    from zero (TFLite's form rounds them toward +inf) -- the tie rule of the rest of the gemmlowp
    program and of its fake-quant simulation. Exact: ``|x| M0 < 2^62`` fits int64."""
    shift = np.asarray(shift, np.int64)
    total = np.int64(31) - shift  # in [1, 62]: quantize_multiplier keeps shift in [-31, 30]
    x = np.clip(np.asarray(x, np.int64), INT32_MIN, INT32_MAX)  # the int32 accumulator TFLite takes
    p = np.abs(x) * np.asarray(m0, np.int64)
    q = (p + (np.int64(1) << (total - 1))) >> total
    return np.clip(np.where(x < 0, -q, q), INT32_MIN, INT32_MAX)


def bias_limit(w_int: np.ndarray) -> np.ndarray:
    """Per-output-channel bound on the int32 bias that keeps every partial sum of the conv/linear
    inside int32, whatever order a runtime adds in.

    ONNX Runtime (QLinearConv/QGemm) and TFLite accumulate ``bias + sum(x * w)`` in int32 and
    wrap on overflow; MLAS first folds the input zero point into the bias (``bias - zx * sum(w)``,
    zx up to 255 for uint8) and then adds ``sum(x_u8 * w)``. Each of the two terms is bounded by
    ``255 * sum|w_c|``, so ``|bias_c| <= INT32_MAX - 2 * 255 * sum|w_c|`` leaves no partial sum
    outside int32. A bias that needs more is a channel with a near-zero weight scale (a dead
    channel: BN-folded weights ~1e-9, as in EfficientNet-Lite1) and was saturated anyway; the
    interpreter sums in int64, so without this bound it and the runtimes disagreed by tens of LSB.
    """
    w = np.abs(np.asarray(w_int).astype(np.int64)).reshape(np.shape(w_int)[0], -1).sum(axis=1)
    return np.maximum(INT32_MAX - 2 * 255 * w, 0)


def requant_rounding(bits: int) -> str | None:
    """The recorded rounding of a gemmlowp requantization writing a ``bits``-wide tensor.

    8 bits and wider keep gemmlowp's double rounding (what TFLite runs; the exporter's parity
    depends on it): ``None``, nothing recorded. Narrower outputs have accumulators of a few
    hundred and multipliers near 1/2, where SaturatingRoundingDoublingHighMul's first rounding
    lands on a half step often enough to move 3-9% of outputs: ``"single"``.
    """
    return "single" if bits < 8 else None


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

    ``gemmlowp`` uses (m0, shift) with double rounding, ``single`` the same (m0, shift) rounded
    once; ``onnxruntime`` multiplies in float32 by ``real_multiplier`` and rounds half to even,
    exactly as MLAS does.
    """
    if rounding == "gemmlowp":
        y = multiply_by_quantized_multiplier(acc, m0, shift)
    elif rounding == "single":
        y = multiply_by_quantized_multiplier_single(acc, m0, shift)
    elif rounding == "onnxruntime":
        y = np.rint(np.asarray(acc).astype(np.float32) * np.asarray(real_multiplier, np.float32))
        y = y.astype(np.int64)
    else:
        check_rounding(rounding)
    return np.clip(y + np.asarray(zero_point, np.int64), qmin, qmax).astype(np.int32)


def quantize_in(x: np.ndarray, qp: QParams, dtype=np.float32) -> np.ndarray:
    """Real -> integer (int32 container) the way ONNX ``QuantizeLinear`` and ONNX Runtime do it.

    ``clamp(rint(x / scale) + zero_point, qmin, qmax)`` with the division done in ``dtype`` (the
    input's float type, float32 for float32 tensors) and rounding half to even. ``quantize``
    divides in float64 instead; the two differ by one LSB where the float32 quotient rounds onto
    (or off) a .5 tie, so anything that must match a runtime bit-exactly uses this one. NaN maps
    to the zero point; +-inf saturate.
    """
    s, z = qp.broadcast(np.ndim(x))
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.asarray(x).astype(dtype) / np.asarray(s).astype(dtype)
    r = np.rint(v).astype(np.float64)
    r = np.where(np.isnan(r), 0.0, r)  # NaN has no integer; it maps to the zero point
    r = np.clip(r, -(2.0**40), 2.0**40)  # +-inf and huge values saturate; keeps the cast defined
    return np.clip(r.astype(np.int64) + np.asarray(z, np.int64), qp.qmin, qp.qmax).astype(np.int32)


def block_broadcast(param: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int) -> np.ndarray:
    """Blocked quantization: expand a per-block scale/zero point to the tensor's full ``shape``.

    ``param`` has ``shape`` except along ``axis``, where it holds ``ceil(shape[axis]/block_size)``
    entries; each is repeated ``block_size`` times (the last block may be short), as in ONNX
    ``QuantizeLinear``/``DequantizeLinear`` with ``block_size > 0``.
    """
    param = np.asarray(param)
    shape = tuple(int(d) for d in shape)
    if block_size <= 0:
        raise RecipeError(f"block_size must be a positive integer, got {block_size}")
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise RecipeError(f"quantization axis {axis} is out of range for a {ndim}-D tensor")
    axis %= ndim
    nblocks = -(-shape[axis] // block_size)
    expect = shape[:axis] + (nblocks,) + shape[axis + 1 :]
    if param.shape != expect:
        raise RecipeError(
            f"blocked qparams must have shape {expect} for a tensor of shape {shape} with "
            f"block_size {block_size} along axis {axis}, got {param.shape}"
        )
    return np.repeat(param, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)
