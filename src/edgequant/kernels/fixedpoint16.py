"""gemmlowp's 16-bit fixed-point sigmoid and tanh, as TFLite's integer LSTM computes its gates.

TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM (8x8->16) applies ``gemmlowp::logistic`` to Q3.12 gate
pre-activations and ``gemmlowp::tanh`` to Q3.12 cell-gate inputs and to the int16 cell state read at
its own power-of-two scale (``IntegerBits = 15 + log2(cell scale)``), all in int16 raw arithmetic
(``tensor_utils::ApplySigmoid``/``ApplyTanh``). To run a program that LiteRT reproduces bit for bit,
the same integer steps are written here (gemmlowp ``fixedpoint.h``, int16 specializations: wrapping
add/sub, ``SaturatingRoundingDoublingHighMul``, ``RoundingDivideByPOT``, 32-bit constants rounded to 16
bits) and evaluated once on all 65536 int16 inputs; a lookup is then one index
(``table(fn, integer_bits)[v + 32768]``). Output: Q0.15.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

ALL = np.arange(-32768, 32768, dtype=np.int64)


def _w16(v):
    """static_cast<int16_t>: two's-complement wrap."""
    return ((np.asarray(v, np.int64) + 32768) & 0xFFFF) - 32768


def _trunc_div(v, d: int):
    """C integer division (toward zero) by a positive ``d``."""
    return np.where(v >= 0, v // d, -((-v) // d))


def _rdp(x, e: int):
    """RoundingDivideByPOT (ties away from zero)."""
    if e == 0:
        return x
    mask = (1 << e) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + ((x & mask) > threshold)


def _c16(raw32: int) -> int:
    """GEMMLOWP_CHECKED_FIXEDPOINT_CONSTANT for int16: the int32 raw value rounding-shifted by 16."""
    return int(_rdp(np.int64(raw32), 16))


def _mul(a, b):
    """int16 SaturatingRoundingDoublingHighMul (a FixedPoint product)."""
    ab = a * b
    q = _trunc_div(ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14)), 1 << 15)
    return np.where((a == b) & (a == -32768), 32767, _w16(q))


def _mul_pot(x, e: int):
    """SaturatingRoundingMultiplyByPOT<e> on int16 (saturating left shift, or rounding right shift)."""
    if e <= 0:
        return _rdp(x, -e)
    threshold = (1 << (15 - e)) - 1
    return np.where(x > threshold, 32767, np.where(x < -threshold, -32768, _w16(x << e)))


def _half_sum(a, b):
    s = a + b
    return _w16(_trunc_div(s + np.where(s >= 0, 1, -1), 2))


def _exp_quarter(a):
    """exp(x) for x in [-1/4, 0), Q0.15 in and out."""
    const, third = _c16(1895147668), _c16(715827883)
    x = _w16(a + (1 << 12))
    x2 = _mul(x, x)
    x3, x4 = _mul(x2, x), _mul(x2, x2)
    poly = _mul_pot(_w16(_mul(_w16(_mul_pot(x4, -2) + x3), third) + x2), -1)
    s = const + _mul(const, _w16(x + poly))
    return np.clip(s, -32768, 32767)  # AddSaturatingIf16Bit


BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401), (4, 242))


def _exp_negative(a, m: int):
    """exp(a) for a <= 0 given with ``m`` integer bits; Q0.15 out."""
    frac = 15 - m
    quarter = 1 << (frac - 2)
    a_mod = _w16((a & _w16(quarter - 1)) - quarter)
    result = _exp_quarter(_mul_pot(a_mod, m))
    remainder = _w16(a_mod - a)
    for e, mult in BARREL:
        if m > e:
            bit = remainder & _w16(1 << (frac + e))
            result = np.where(bit != 0, _mul(result, _c16(mult)), result)
    if m > 5:
        result = np.where(a < _c16(-(1 << (36 - m))), 0, result)
    return np.where(a == 0, 32767, result)


def _newton(a):
    """The Newton-Raphson reciprocal of gemmlowp's ``one_over_one_plus_x_for_x_in_0_1``: x ~ 1 / half_denominator (Q2.13)."""
    half_den = _half_sum(a, 32767)
    x = _w16(_c16(1515870810) + _mul(half_den, _c16(-1010580540)))
    for _ in range(3):
        one_minus = _w16((1 << 13) - _mul(half_den, x))
        x = _w16(x + _mul_pot(_mul(x, one_minus), 2))
    return x


def logistic(a, m: int = 3):
    """gemmlowp::logistic of int16 raw ``a`` with ``m`` integer bits -> Q0.15."""
    a = np.asarray(a, np.int64)
    pos = a > 0
    absv = np.where(pos, a, _w16(-a))
    r_pos = _mul_pot(_newton(_exp_negative(_w16(-absv), m)), 1)  # Rescale<0>(ExactMulByPot<-1>(x))
    return np.where(a == 0, _c16(1 << 30), np.where(pos, r_pos, _w16(32767 - r_pos)))


def tanh(a, m: int = 3):
    """gemmlowp::tanh of int16 raw ``a`` with ``m`` integer bits -> Q0.15."""
    a = np.asarray(a, np.int64)
    neg = a < 0
    n = np.where(neg, a, _w16(-a))
    t = _mul_pot(_w16(_newton(_exp_negative(n, m + 1)) - (1 << 13)), 2)  # Rescale<0>(x - F2::One())
    return np.where(a == 0, 0, np.where(neg, _w16(-t), t))


@lru_cache(maxsize=None)
def table(fn: str, integer_bits: int = 3) -> np.ndarray:
    """int64 (65536,): ``fn`` ("sigmoid" or "tanh") at every int16 input, indexed by ``v + 32768``."""
    if not 0 <= integer_bits <= 6 or (fn == "sigmoid" and integer_bits != 3):
        raise ValueError(f"TFLite's LSTM computes {fn} with integer bits {'3' if fn == 'sigmoid' else '0..6'}, "
                         f"not {integer_bits}")
    out = (logistic if fn == "sigmoid" else tanh)(ALL, integer_bits)
    out.setflags(write=False)
    return out


def lookup(v, fn: str, integer_bits: int = 3) -> np.ndarray:
    """``fn`` of int16 values ``v`` (any int dtype) through the full table."""
    return table(fn, integer_bits)[np.asarray(v, np.int64) + 32768]
