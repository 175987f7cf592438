"""The fused native kernels compute exactly what the NumPy spec (qmath) computes."""
from __future__ import annotations

import numpy as np
import pytest

from edgequant import qmath
from edgequant.kernels import elementwise, native

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="native kernels not built")

EDGE = np.array([0, 1, -1, 2**20, -2**20, 2**31 - 1, -2**31, 2**31 + 5, -2**31 - 5, 2**40, -2**40], np.int64)


def _params(rng, c):
    real = np.exp(rng.uniform(np.log(1e-6), np.log(8.0), c))
    real[:2] = [0.5, 1.0]  # exact halves are where the two roundings differ
    m0, shift = qmath.quantize_multiplier(real)
    return m0, shift, real.astype(np.float32)


@pytest.mark.parametrize("rounding", ["gemmlowp", "single", "onnxruntime"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32, np.float64])
def test_requantize_matches_qmath(rounding, dtype):
    rng = np.random.default_rng(0)
    c = 7
    acc = rng.integers(-2**23, 2**23, size=(3, c, 41)).astype(np.int64)
    acc[0, :, : len(EDGE)] = EDGE if dtype == np.int64 else np.clip(EDGE, -2**24, 2**24)
    acc[1, :, :64 if 41 > 64 else 41] = rng.integers(-300, 300, size=(c, 41))  # small accumulators: ties
    bias = rng.integers(-5000, 5000, size=c).astype(np.int32)
    m0, shift, real = _params(rng, c)
    cs = (1, c, 1)
    want = qmath.requantize(acc + bias.reshape(cs).astype(np.int64), m0=m0.reshape(cs), shift=shift.reshape(cs),
                            real_multiplier=real.reshape(cs), zero_point=-3, qmin=-128, qmax=127,
                            rounding=rounding).astype(np.int8)
    got = native.requantize(acc.astype(dtype), axis=1, bias=bias, m0=m0, shift=shift, multiplier=real,
                            zero_point=-3, qmin=-128, qmax=127, rounding=rounding)
    np.testing.assert_array_equal(got, want)


def test_requantize_per_tensor_and_channels_last():
    rng = np.random.default_rng(1)
    acc = rng.integers(-2**20, 2**20, size=(5, 9, 16)).astype(np.int64)
    m0, shift, real = _params(rng, 16)
    want = qmath.requantize(acc, m0=m0, shift=shift, real_multiplier=real, zero_point=4, qmin=-20, qmax=100)
    got = native.requantize(acc, axis=-1, bias=None, m0=m0, shift=shift, multiplier=real, zero_point=4,
                            qmin=-20, qmax=100, rounding="gemmlowp")
    np.testing.assert_array_equal(got, want.astype(np.int8))
    one = qmath.requantize(acc, m0=m0[3], shift=shift[3], real_multiplier=real[3], zero_point=4, qmin=-128, qmax=127)
    got1 = native.requantize(acc, axis=1, bias=None, m0=m0[3:4], shift=shift[3:4], multiplier=real[3:4],
                             zero_point=4, qmin=-128, qmax=127, rounding="gemmlowp")
    np.testing.assert_array_equal(got1, one.astype(np.int8))


@pytest.mark.parametrize("single", [False, True])
def test_add_matches_spec(single):
    rng = np.random.default_rng(2)
    a = rng.integers(-128, 128, size=(4, 6, 33)).astype(np.int8)
    b = rng.integers(-128, 128, size=(4, 6, 33)).astype(np.int8)
    at = elementwise.add_multipliers(0.031, 0.0117, 0.04)
    mul = qmath.multiply_by_quantized_multiplier_single if single else qmath.multiply_by_quantized_multiplier
    sa = mul((a.astype(np.int64) - 3) << 20, at["m0_a"], at["shift_a"])
    sb = mul((b.astype(np.int64) + 7) << 20, at["m0_b"], at["shift_b"])
    want = np.clip(mul(sa + sb, at["m0_out"], at["shift_out"]) - 2, -128, 100).astype(np.int8)
    got = native.add(a, b, 3, -7, -2, at, -128, 100, single)
    np.testing.assert_array_equal(got, want)


def test_lut_and_out_of_table():
    rng = np.random.default_rng(3)
    table = rng.integers(-128, 128, size=200).astype(np.int8)
    x = rng.integers(-100, 100, size=(3, 1000)).astype(np.int8)
    out, bad = native.lut(x, table, -100)
    assert bad == -1
    np.testing.assert_array_equal(out, table[x.astype(np.int64) + 100])
    x[2, 17] = 120
    _, bad = native.lut(x, table, -100)
    assert bad == 2 * 1000 + 17
