"""Property tests of the quantization math (qmath): qparams, (de)quantize, fake-quant, requantize."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from edgequant.errors import RecipeError
from edgequant.qmath import (
    INT32_MAX,
    INT32_MIN,
    check_rounding,
    compute_qparams,
    dequantize,
    fake_quantize,
    multiply_by_quantized_multiplier,
    qrange,
    quantize,
    quantize_multiplier,
    requantize,
    round_half_away,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F32_EPS = float(np.finfo(np.float32).eps)

bits_st = st.integers(2, 16)
# magnitudes well inside float32 so that scales are normal float32 numbers
mag_st = st.one_of(st.just(0.0), st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False))


@st.composite
def ranges(draw, channels: int | None = None):
    """(lo, hi) as floats, or arrays of ``channels`` entries; any order around 0."""
    n = 1 if channels is None else channels
    signed_mag = st.builds(lambda m, neg: -m if neg else m, mag_st, st.booleans())
    a = np.array([draw(signed_mag) for _ in range(n)])
    b = np.array([draw(signed_mag) for _ in range(n)])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if channels is None:
        return float(lo[0]), float(hi[0])
    return lo, hi


@st.composite
def qconfigs(draw):
    return dict(
        bits=draw(bits_st),
        signed=draw(st.booleans()),
        symmetric=draw(st.booleans()),
        narrow=draw(st.booleans()),
    )


def _rep_range(qp):
    """Exact representable real range [L, H] (float64) of per-tensor/per-channel qparams."""
    s = np.asarray(qp.scale, np.float64)
    z = np.asarray(qp.zero_point, np.float64)
    return s * (qp.qmin - z), s * (qp.qmax - z)


# -- qrange / qparams ----------------------------------------------------------------------------


@given(bits=bits_st, signed=st.booleans(), narrow=st.booleans())
def test_qrange(bits, signed, narrow):
    qmin, qmax = qrange(bits, signed, narrow)
    levels = 2**bits - (1 if narrow else 0)
    assert qmax - qmin + 1 == levels
    if signed:
        assert qmax == 2 ** (bits - 1) - 1 and (qmin == -qmax if narrow else qmin == -qmax - 1)
    else:
        assert qmax == 2**bits - 1


@pytest.mark.parametrize("bits", [0, 17, -3])
def test_qrange_rejects_bad_bits(bits):
    with pytest.raises(RecipeError):
        qrange(bits)


@SETTINGS
@given(r=ranges(), cfg=qconfigs())
@example(r=(0.0, 0.0), cfg=dict(bits=8, signed=True, symmetric=False, narrow=False))
@example(r=(3.0, 3.0), cfg=dict(bits=8, signed=False, symmetric=False, narrow=True))
@example(r=(-1e6, 1e-6), cfg=dict(bits=16, signed=True, symmetric=False, narrow=False))
def test_zero_is_exact_per_tensor(r, cfg):
    qp = compute_qparams(*r, **cfg)
    assert qp.scale.shape == () and qp.zero_point.shape == ()
    assert np.isfinite(qp.scale) and qp.scale > 0
    assert qp.qmin <= int(qp.zero_point) <= qp.qmax
    if cfg["symmetric"] and cfg["signed"]:
        assert int(qp.zero_point) == 0
    q0 = quantize(np.zeros(3, np.float32), qp)
    assert np.all(q0 == qp.zero_point)
    assert np.all(dequantize(q0, qp) == 0.0)


@SETTINGS
@given(data=st.data(), cfg=qconfigs(), channels=st.integers(1, 6))
def test_zero_is_exact_per_channel(data, cfg, channels):
    lo, hi = data.draw(ranges(channels))
    qp = compute_qparams(lo, hi, axis=0, **cfg)
    assert qp.scale.shape == (channels,) and qp.zero_point.shape == (channels,)
    assert np.all(qp.scale > 0) and np.all(np.isfinite(qp.scale))
    assert np.all((qp.zero_point >= qp.qmin) & (qp.zero_point <= qp.qmax))
    q0 = quantize(np.zeros((channels, 4), np.float32), qp)
    assert np.all(dequantize(q0, qp) == 0.0)


def _roundtrip_checks(x, qp, lo, hi, cfg):
    """Inside the representable range: error <= scale/2 (+ float32 eps); the requested range is
    covered to within scale/2; beyond it values saturate to qmin/qmax."""
    s = np.asarray(qp.scale, np.float64)
    L, H = _rep_range(qp)
    q = quantize(x, qp)
    err = np.abs(dequantize(q, qp).astype(np.float64) - x.astype(np.float64))
    tol = 0.5 * s + 3 * F32_EPS * np.maximum(np.abs(L), np.abs(H)) + 1e-30
    inside = (x >= L) & (x <= H)
    assert np.all(err[inside] <= np.broadcast_to(tol, x.shape)[inside])
    # the requested range (unsigned symmetric: its non-negative part) is covered
    req_lo = np.maximum(np.minimum(lo, 0.0), 0.0 if (cfg["symmetric"] and not cfg["signed"]) else -np.inf)
    req_hi = np.maximum(hi, 0.0)
    assert np.all(req_lo >= L - tol) and np.all(req_hi <= H + tol)
    below, above = x < L - 0.5 * s, x > H + 0.5 * s
    assert np.all(q[below] == qp.qmin) and np.all(q[above] == qp.qmax)
    assert np.all((q >= qp.qmin) & (q <= qp.qmax))


@SETTINGS
@given(r=ranges(), cfg=qconfigs(), u=st.lists(st.floats(-1.5, 1.5), min_size=1, max_size=40))
def test_roundtrip_per_tensor(r, cfg, u):
    lo, hi = r
    qp = compute_qparams(lo, hi, **cfg)
    L, H = _rep_range(qp)
    span = max(float(H - L), 1e-6)
    x = (float(L + H) / 2 + np.array(u) * span).astype(np.float32)  # inside and outside
    x = np.concatenate([x, np.array([L, H, lo, hi, 0.0], np.float32)])
    _roundtrip_checks(x, qp, lo, hi, cfg)


@SETTINGS
@given(data=st.data(), cfg=qconfigs(), channels=st.integers(1, 5), axis=st.sampled_from([0, 1, -1]))
def test_roundtrip_per_channel_matches_per_tensor(data, cfg, channels, axis):
    lo, hi = data.draw(ranges(channels))
    qp = compute_qparams(lo, hi, axis=axis, **cfg)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    L, H = _rep_range(qp)
    x = (rng.uniform(-1.3, 1.3, size=(7, channels, 3)) * np.maximum(H - L, 1e-6)[None, :, None]).astype(np.float32)
    x = np.moveaxis(x, 1, axis)  # channel axis where qparams expect it
    q = quantize(x, qp)
    shape = [1] * 3
    shape[axis] = -1
    for c in range(channels):
        qpc = compute_qparams(lo[c], hi[c], **cfg)
        xc = np.take(x, c, axis=axis)
        np.testing.assert_array_equal(np.take(q, c, axis=axis), quantize(xc, qpc))
        np.testing.assert_array_equal(np.take(dequantize(q, qp), c, axis=axis), dequantize(quantize(xc, qpc), qpc))
        _roundtrip_checks(xc, qpc, lo[c], hi[c], cfg)


# -- fake quantize -------------------------------------------------------------------------------


@SETTINGS
@given(r=ranges(), cfg=qconfigs(), seed=st.integers(0, 2**32 - 1))
def test_fake_quantize_forward_and_ste(r, cfg, seed):
    qp = compute_qparams(*r, **cfg)
    L, H = _rep_range(qp)
    span = max(float(H - L), 1e-3)
    rng = np.random.default_rng(seed)
    x_np = (float(L + H) / 2 + rng.uniform(-1.2, 1.2, 64) * span).astype(np.float32)
    s, z = float(qp.scale), int(qp.zero_point)
    # float64 tensors divide like quantize() does (float64), so the forward is bit-exact
    x = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
    out = fake_quantize(x, s, z, qp.qmin, qp.qmax)
    ref = dequantize(quantize(x_np, qp), qp)
    np.testing.assert_array_equal(out.detach().numpy().astype(np.float32), ref)
    out.sum().backward()
    r_int = np.rint(x_np.astype(np.float64) / s) + z
    inside = (r_int >= qp.qmin) & (r_int <= qp.qmax)
    np.testing.assert_array_equal(x.grad.numpy(), inside.astype(np.float64))
    # float32 tensors divide in float32: same result except one step at near-ties
    x32 = torch.tensor(x_np)
    out32 = fake_quantize(x32, torch.tensor(s), torch.tensor(float(z)), qp.qmin, qp.qmax).numpy()
    # ... plus float32 rounding of the dequantized value itself (|ref| * eps, large ranges)
    assert np.all(np.abs(out32 - ref) <= s * (1 + 1e-6) + 2 * F32_EPS * np.abs(ref))


def test_fake_quantize_gradient_inside_outside_and_per_channel():
    qp = compute_qparams(np.array([-1.0, -4.0]), np.array([1.0, 4.0]), bits=4, symmetric=True, narrow=True, axis=0)
    s = torch.tensor(qp.scale.astype(np.float64)).reshape(2, 1)
    x = torch.tensor([[-3.0, -0.5, 0.2, 0.9, 3.0], [-9.0, -2.0, 0.0, 3.9, 4.5]], dtype=torch.float64, requires_grad=True)
    out = fake_quantize(x, s, 0.0, qp.qmin, qp.qmax)
    np.testing.assert_array_equal(
        out.detach().numpy().astype(np.float32), dequantize(quantize(x.detach().numpy(), qp), qp)
    )
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 1, 1, 0], [0, 1, 1, 1, 0]])


# -- rounding helpers ----------------------------------------------------------------------------


def _round_half_away_exact(v: float) -> int:
    f = Fraction(v)
    n = int(abs(f) + Fraction(1, 2))  # floor(|v| + 1/2) exactly
    return n if f >= 0 else -n


@SETTINGS
@given(v=st.floats(-1e12, 1e12, allow_nan=False))
@example(v=0.49999999999999994)
@example(v=-0.49999999999999994)
@example(v=2.5)
@example(v=-2.5)
@example(v=4503599627370497.0)
def test_round_half_away_numpy(v):
    assert round_half_away(np.array([v]))[0] == _round_half_away_exact(v)


@SETTINGS
@given(v=st.floats(-1e6, 1e6, allow_nan=False, width=32))
@example(v=0.4999999701976776)
@example(v=-1.5)
def test_round_half_away_torch(v):
    assert float(round_half_away(torch.tensor([v]))[0]) == _round_half_away_exact(v)


# -- requantization ------------------------------------------------------------------------------


@SETTINGS
@given(real=st.floats(2.0**-31, 2.0**30, allow_nan=False, exclude_max=True))
@example(real=1.0 - 2.0**-40)
@example(real=0.5)
@example(real=2.0**-31)
def test_quantize_multiplier_reconstructs(real):
    m0, shift = quantize_multiplier(real)
    m0, shift = int(m0), int(shift)
    assert 2**30 <= m0 < 2**31
    rec = Fraction(m0) * Fraction(2) ** (shift - 31)
    assert abs(rec - Fraction(real)) <= Fraction(real) * Fraction(1, 2**30)


def test_quantize_multiplier_edges():
    m0, shift = quantize_multiplier(np.array([0.0, 2.0**-40, 1.0, 2.0**31, 1e12]))
    assert list(m0[:2]) == [0, 0] and list(shift[:2]) == [0, 0]  # flushed to zero (TFLite)
    assert (int(m0[2]), int(shift[2])) == (2**30, 1)  # 1.0 = 0.5 * 2^1
    # TfLiteRound rounds the Q31 mantissa half away from zero: 2^30 + 0.5 -> 2^30 + 1
    assert int(quantize_multiplier(0.5 + 2.0**-32)[0]) == 2**30 + 1
    # TFLite saturates shifts above 30 (keeps the integer left shift from overflowing)
    assert all(int(s) <= 30 for s in shift)
    with pytest.raises(RecipeError):
        quantize_multiplier(-1.0)
    with pytest.raises(RecipeError):
        quantize_multiplier(float("nan"))


def _exact_and_band(acc: int, m0: int, shift: int) -> tuple[Fraction, Fraction]:
    left, right = max(shift, 0), max(-shift, 0)
    xs = min(max(acc * 2**left, INT32_MIN), INT32_MAX)  # the left shift saturates to int32
    exact = Fraction(xs * m0, 2**31) / 2**right
    return exact, Fraction(1, 2 ** (right + 1))


def _check_mbqm(acc: int, real: float):
    m0, shift = quantize_multiplier(real)
    got = int(multiply_by_quantized_multiplier(np.array([acc], np.int64), m0, shift)[0])
    exact, band = _exact_and_band(acc, int(m0), int(shift))
    n = int(abs(exact) + Fraction(1, 2))
    want = n if exact >= 0 else -n
    frac = abs(exact) - int(abs(exact))
    if abs(frac - Fraction(1, 2)) <= band:  # gemmlowp's first rounding can cross the tie
        assert abs(got - want) <= 1, (acc, real, got, want)
    else:
        assert got == want, (acc, real, got, want, float(exact))


acc_st = st.integers(INT32_MIN, INT32_MAX)


@settings(max_examples=300, deadline=None)
@given(a=acc_st, b=acc_st)
@example(a=INT32_MIN, b=INT32_MIN)
@example(a=-(2**30), b=1)  # -0.5 exactly: gemmlowp (like NEON vqrdmulh) rounds ties upward
@example(a=2**30, b=1)
@example(a=-3 * 2**30, b=1)
def test_saturating_rounding_doubling_high_mul_exact(a, b):
    got = int(saturating_rounding_doubling_high_mul(np.array([a]), np.array([b]))[0])
    if a == b == INT32_MIN:
        assert got == INT32_MAX
    else:  # nearest integer to a*b/2^31, ties toward +inf: floor(a*b/2^31 + 1/2)
        assert got == (a * b + 2**30) >> 31


@settings(max_examples=300, deadline=None)
@given(x=acc_st, e=st.integers(0, 31))
@example(x=-3, e=1)
@example(x=3, e=1)
@example(x=INT32_MIN, e=31)
@example(x=INT32_MAX, e=31)
def test_rounding_divide_by_pot_exact(x, e):
    got = int(rounding_divide_by_pot(np.array([x]), e)[0])
    exact = Fraction(x, 2**e)
    n = int(abs(exact) + Fraction(1, 2))  # ties away from zero
    assert got == (n if exact >= 0 else -n)


@settings(max_examples=400, deadline=None)
@given(acc=acc_st, real=st.floats(0.0, 1.0, exclude_min=True, exclude_max=True))
@example(acc=INT32_MIN, real=0.9999999999)
@example(acc=INT32_MAX, real=0.9999999999)
@example(acc=INT32_MAX, real=1.0 - 2.0**-40)
@example(acc=-3, real=0.5)
@example(acc=3, real=0.5)
@example(acc=-(2**30) - 1, real=2.0**-31)
@example(acc=12345, real=1e-12)
def test_multiply_by_quantized_multiplier_below_one(acc, real):
    _check_mbqm(acc, real)


@settings(max_examples=300, deadline=None)
@given(acc=acc_st, real=st.floats(1.0, 2.0**20))
@example(acc=INT32_MAX, real=3.0)
@example(acc=INT32_MIN, real=1.5)
@example(acc=7, real=1.0)
def test_multiply_by_quantized_multiplier_above_one(acc, real):
    _check_mbqm(acc, real)


@SETTINGS
@given(
    acc=st.lists(acc_st, min_size=1, max_size=20),
    real=st.floats(1e-6, 4.0),
    zp=st.integers(-128, 127),
)
def test_requantize_modes(acc, real, zp):
    acc = np.array(acc, np.int32)
    m0, shift = quantize_multiplier(real)
    kw = dict(m0=m0, shift=shift, real_multiplier=np.float32(real), zero_point=zp, qmin=-128, qmax=127)
    ort = requantize(acc, rounding="onnxruntime", **kw)
    ref = np.rint(acc.astype(np.float32) * np.float32(real)).astype(np.int64) + zp
    np.testing.assert_array_equal(ort, np.clip(ref, -128, 127).astype(np.int32))
    g = requantize(acc, rounding="gemmlowp", **kw)
    ref_g = multiply_by_quantized_multiplier(acc, m0, shift) + zp
    np.testing.assert_array_equal(g, np.clip(ref_g, -128, 127).astype(np.int32))
    assert ort.dtype == np.int32 and g.dtype == np.int32


def test_unknown_rounding_mode_raises():
    with pytest.raises(RecipeError):
        check_rounding("banker")
    with pytest.raises(RecipeError):
        requantize(
            np.array([1], np.int32), m0=np.int32(2**30), shift=np.int32(0),
            real_multiplier=0.5, zero_point=0, qmin=-128, qmax=127, rounding="banker",
        )
    assert check_rounding("gemmlowp") == "gemmlowp"


@pytest.mark.parametrize("hi", [1e-300, 1e-45, 1.4e-45])
@pytest.mark.parametrize("symmetric", [False, True])
def test_tiny_range_keeps_a_usable_scale(hi, symmetric):
    qp = compute_qparams(-hi, hi, bits=8, symmetric=symmetric)
    assert np.isfinite(qp.scale) and qp.scale > 0
    q = quantize(np.array([0.0, hi], np.float32), qp)
    assert q[0] == qp.zero_point and np.all(np.isfinite(dequantize(q, qp)))
