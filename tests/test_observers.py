"""Observers on known distributions: clipping beats min/max, streaming equals one batch, fixed state."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgequant.errors import CalibrationError, RecipeError
from edgequant.observers import OBSERVERS, make_observer
from edgequant.observers.histogram import StreamingHistogram
from edgequant.observers.kl import kl_threshold_bin
from edgequant.observers.mse import data_sq_error, histogram_sq_error
from edgequant.qmath import compute_qparams, dequantize, quantize

CLIPPING = ("percentile", "mse", "kl")
HISTOGRAM = ("percentile", "mse", "kl")


def qmse(qp, x) -> float:
    return float(np.mean((dequantize(quantize(x, qp), qp).astype(np.float64) - x) ** 2))


def calibrate(name, batches, **kw):
    obs = make_observer(name, **kw)
    for b in batches:
        obs.update(b)
    return obs


def state_nbytes(obj, seen=None) -> int:
    """Bytes of every array reachable from an observer's attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if hasattr(obj, "__dict__"):
        return sum(state_nbytes(v, seen) for v in vars(obj).values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v, seen) for v in obj)
    return 0


@pytest.fixture(scope="module")
def laplace_with_outliers():
    rng = np.random.default_rng(1)
    calib = rng.laplace(size=200_000).astype(np.float32)
    calib[:4] = [120.0, -100.0, 150.0, -130.0]  # a few huge outliers (>100 b)
    clean = rng.laplace(size=200_000).astype(np.float32)  # the distribution the clip is for
    return calib, clean


# -- registry / errors ---------------------------------------------------------------------------


def test_registered():
    assert {"minmax", "percentile", "mse", "kl"} <= set(OBSERVERS)
    for name in CLIPPING:
        assert OBSERVERS[name].name == name


def test_unknown_observer_raises_recipe_error():
    with pytest.raises(RecipeError, match="unknown observer"):
        make_observer("entropy-ish")


@pytest.mark.parametrize("name", CLIPPING)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(name, bad):
    obs = make_observer(name)
    obs.update(np.ones(10, np.float32))
    x = np.ones(10, np.float32)
    x[3] = bad
    with pytest.raises(CalibrationError):
        obs.update(x)


@pytest.mark.parametrize("name", CLIPPING)
@pytest.mark.parametrize("axis", [None, 0])
def test_empty_observer_raises(name, axis):
    obs = make_observer(name, axis=axis)
    obs.update(np.zeros((0, 3), np.float32))  # empty batches do not count
    with pytest.raises(CalibrationError):
        obs.qparams()


@pytest.mark.parametrize(
    "name,kw", [("percentile", {"percentile": 40}), ("mse", {"candidates": 1}), ("kl", {"stride": 0})]
)
def test_bad_options_raise_recipe_error(name, kw):
    with pytest.raises(RecipeError):
        make_observer(name, **kw)


# -- quality on a known distribution -------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("name", CLIPPING)
def test_clipping_beats_minmax_on_laplace_with_outliers(laplace_with_outliers, name, bits, symmetric):
    calib, clean = laplace_with_outliers
    batches = np.array_split(calib, 10)
    base = calibrate("minmax", batches, bits=bits, symmetric=symmetric).qparams()
    obs = calibrate(name, batches, bits=bits, symmetric=symmetric)
    qp = obs.qparams()
    lo, hi = obs.range()
    assert np.ndim(lo) == 0 and np.ndim(hi) == 0  # scalars per tensor
    assert max(-lo, hi) < 0.9 * 150.0  # clipped below the largest outlier
    assert qmse(qp, clean) < 0.9 * qmse(base, clean)
    if name == "mse":  # it minimises the error on the calibration data itself, outliers included
        assert qmse(qp, calib) < 0.9 * qmse(base, calib)
    else:  # the shape-based clips ignore the outliers altogether
        assert max(-lo, hi) < 30.0 and qmse(qp, clean) < 0.1 * qmse(base, clean)


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_never_worse_than_minmax_per_channel_weights(bits):
    rng = np.random.default_rng(2)
    w = (rng.laplace(size=(16, 3, 3, 3)) * rng.uniform(0.01, 1.0, (16, 1, 1, 1))).astype(np.float32)
    w[3, 0, 1, 1] = 40 * np.abs(w[3]).mean()  # one channel with an outlier
    cfg = dict(bits=bits, symmetric=True, narrow=True, axis=0)  # the weight convention
    obs = calibrate("mse", [w], **cfg)
    lo, hi = obs.range()
    assert lo.shape == (16,) and hi.shape == (16,)
    qp, base = obs.qparams(), calibrate("minmax", [w], **cfg).qparams()
    assert qp.scale.shape == (16,) and np.all(qp.zero_point == 0)
    for c in range(16):  # the full range is one of the candidates: never worse, per channel
        xc = w[c].reshape(-1)
        err = np.mean((dequantize(quantize(xc, _channel(qp, c)), _channel(qp, c)) - xc) ** 2)
        err0 = np.mean((dequantize(quantize(xc, _channel(base, c)), _channel(base, c)) - xc) ** 2)
        assert err <= err0 * (1 + 1e-9)
    if bits == 4:  # and at 4 bits the outlier channel is clipped
        assert hi[3] < np.abs(w[3]).max()


def _channel(qp, c):
    from edgequant.qmath import QParams

    return QParams(qp.scale[c].reshape(()), qp.zero_point[c].reshape(()), qp.bits, qp.signed, qp.narrow)


def test_mse_per_channel_matches_per_tensor_on_each_channel():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, 400)).astype(np.float32) * np.array([[0.1], [1], [3], [0.01], [7]], np.float32)
    lo, hi = calibrate("mse", [w], bits=4, symmetric=True, axis=0).range()
    for c in range(5):
        # the per-tensor path works on a histogram: close to the exact per-channel search
        lo_c, hi_c = calibrate("mse", [w[c]], bits=4, symmetric=True).range()
        assert max(-lo_c, hi_c) == pytest.approx(max(-lo[c], hi[c]), rel=0.06)


def test_histogram_error_matches_data_error():
    rng = np.random.default_rng(4)
    x = rng.laplace(size=300_000)
    h = StreamingHistogram(1, 2048)
    h.update(x[:, None])
    counts, edges = h.channel(0)
    for clip in (2.0, 5.0, 9.0, np.abs(x).max()):
        for bits in (3, 4, 8):
            qp = compute_qparams(-clip, clip, bits=bits, symmetric=True)
            s = np.array([float(qp.scale)])
            z = np.array([float(qp.zero_point)])
            exact = data_sq_error(x, s, z, qp.qmin, qp.qmax)[0]
            approx = histogram_sq_error(counts, edges, s, s * (qp.qmin - z), s * (qp.qmax - z))[0]
            assert approx == pytest.approx(exact, rel=0.05)


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_returns_the_quantile(p):
    rng = np.random.default_rng(5)
    x = rng.normal(size=1_000_000).astype(np.float32)
    lo, hi = calibrate("percentile", np.array_split(x, 7), percentile=p).range()
    assert hi == pytest.approx(np.percentile(x, p), rel=0.01)
    assert lo == pytest.approx(np.percentile(x, 100 - p), rel=0.01)
    slo, shi = calibrate("percentile", [x], percentile=p, symmetric=True).range()
    assert shi == pytest.approx(np.percentile(np.abs(x), p), rel=0.01) and slo == -shi
    ulo, uhi = calibrate("percentile", [x], percentile=p, symmetric=True, signed=False).range()
    assert ulo == 0 and uhi == shi


def test_percentile_100_is_minmax_and_99999_is_wider():
    rng = np.random.default_rng(6)
    x = rng.laplace(size=500_000).astype(np.float32)
    lo, hi = calibrate("percentile", [x], percentile=100).range()
    assert lo == x.min() and hi == x.max()
    _, h4 = calibrate("percentile", [x], percentile=99.99).range()
    _, h5 = calibrate("percentile", [x], percentile=99.999).range()
    assert h4 < h5 <= hi


def test_kl_keeps_full_range_of_uniform_and_clips_gaussian_tail():
    rng = np.random.default_rng(7)
    u = rng.uniform(-3, 3, 200_000).astype(np.float32)
    lo, hi = calibrate("kl", [u], symmetric=True).range()
    assert hi == pytest.approx(3.0, rel=0.01) and lo == -hi
    g = rng.normal(size=200_000).astype(np.float32)
    _, hi8 = calibrate("kl", [g], bits=8, symmetric=True).range()
    _, hi4 = calibrate("kl", [g], bits=4, symmetric=True).range()
    assert 2.5 < hi4 <= hi8 < np.abs(g).max()


def test_kl_post_relu_uses_all_levels_and_ignores_the_zero_spike():
    rng = np.random.default_rng(8)
    g = rng.normal(size=200_000).astype(np.float32)
    relu = np.maximum(g, 0)
    obs = calibrate("kl", [relu], bits=8)
    lo, hi = obs.range()
    assert obs._levels(0) == 256 and lo == 0.0
    # without exact zeros the clip is the same as for the positive half alone
    _, hi_pos = calibrate("kl", [g[g > 0]], bits=8).range()
    assert hi == hi_pos and hi > 3.0


def test_kl_threshold_bin_basics():
    assert kl_threshold_bin(np.ones(100), levels=128) == 100  # fewer bins than levels: no clip
    flat = np.ones(2048)
    assert kl_threshold_bin(flat, levels=128) == 2048  # nothing to gain by clipping a flat shape
    # a flat shape loses nothing when merged, however wide the window: no clip
    assert kl_threshold_bin(np.concatenate([np.full(300, 1000.0), np.zeros(1700), [1.0]]), 128) == 2001
    # a decaying bulk plus one far outlier: the window stays near the bulk
    bulk = np.round(1e5 * np.exp(-np.arange(400) / 40.0))
    tail = np.concatenate([bulk, np.zeros(1600), [1.0]])
    assert 128 <= kl_threshold_bin(tail, levels=128) <= 420


# -- streaming, state size, shapes ---------------------------------------------------------------


@pytest.mark.parametrize("name", HISTOGRAM)
@pytest.mark.parametrize("symmetric", [False, True])
def test_streaming_equals_one_batch_per_tensor(name, symmetric):
    rng = np.random.default_rng(9)
    # batches whose ranges grow, shrink and move: the histogram must rebin along the way
    batches = [rng.laplace(size=2000).astype(np.float32) * s + m for s, m in [(0.01, 0), (1, 2), (30, -5), (1, 0), (100, 50)]]
    batches += [rng.laplace(size=(3, 50)).astype(np.float32) for _ in range(20)]
    whole = np.concatenate([b.reshape(-1) for b in batches])
    many = calibrate(name, batches, bits=6, symmetric=symmetric)
    one = calibrate(name, [whole], bits=6, symmetric=symmetric)
    assert many.range() == one.range()  # exactly: the histogram does not depend on batching
    np.testing.assert_array_equal(many.hist.counts, one.hist.counts)


@pytest.mark.parametrize("name", ["percentile", "kl"])
def test_streaming_equals_one_batch_per_channel(name):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(64, 4, 5, 5)).astype(np.float32) * np.array([1, 10, 0.1, 3], np.float32)[None, :, None, None]
    many = calibrate(name, np.array_split(x, 16), axis=1)
    one = calibrate(name, [x], axis=1)
    lo_m, hi_m = many.range()
    lo_o, hi_o = one.range()
    np.testing.assert_array_equal(lo_m, lo_o)
    np.testing.assert_array_equal(hi_m, hi_o)
    assert lo_m.shape == (4,)
    # per channel equals one per-tensor observer per channel
    for c in range(4):
        lo_c, hi_c = calibrate(name, [x[:, c]]).range()
        assert (lo_c, hi_c) == (lo_o[c], hi_o[c])


def test_mse_streaming_per_channel_close_to_one_batch():
    rng = np.random.default_rng(11)
    x = rng.laplace(size=(4, 3000)).astype(np.float32) * np.array([[1], [5], [0.2], [2]], np.float32)
    one = calibrate("mse", [x], bits=4, symmetric=True, axis=0)  # exact data
    many = calibrate("mse", np.array_split(x, 12, axis=1), bits=4, symmetric=True, axis=0)  # histogram
    assert one.data is not None and many.data is None
    np.testing.assert_allclose(many.range()[1], one.range()[1], rtol=0.06)


@pytest.mark.parametrize("name", HISTOGRAM)
@pytest.mark.parametrize("axis", [None, 1])
def test_state_size_does_not_grow(name, axis):
    rng = np.random.default_rng(12)
    obs = make_observer(name, axis=axis)
    sizes = []
    for k in range(60):
        obs.update(rng.laplace(size=(8, 3, 4)).astype(np.float32) * (1 + k))  # growing range too
        sizes.append(state_nbytes(obs))
    assert len(set(sizes[1:])) == 1 and sizes[0] >= sizes[1]  # (MSE per channel drops batch 1)
    obs.qparams()


@pytest.mark.parametrize("name", HISTOGRAM)
@pytest.mark.parametrize("axis", [None, 0])
def test_degenerate_data(name, axis):
    zeros = calibrate(name, [np.zeros((3, 10), np.float32)], axis=axis)
    qp = zeros.qparams()
    assert np.all(qp.scale == 1.0)  # all zero: a harmless scale, zero exact
    const = calibrate(name, [np.full((3, 10), 2.5, np.float32)], axis=axis)
    lo, hi = const.range()
    assert np.all(np.asarray(hi) == 2.5) and np.all(np.asarray(lo) <= 2.5)
    qp = const.qparams()
    x = np.full((3, 10), 2.5, np.float32)
    assert np.max(np.abs(dequantize(quantize(x, qp), qp) - x)) <= np.max(qp.scale) / 2 + 1e-6


@pytest.mark.parametrize("name", HISTOGRAM)
def test_shapes_and_qparams_per_channel(name):
    rng = np.random.default_rng(13)
    x = rng.normal(size=(8, 6, 4, 4)).astype(np.float32)
    obs = calibrate(name, [x, x * 2], axis=1, bits=8)
    lo, hi = obs.range()
    assert lo.shape == (6,) and hi.shape == (6,) and np.all(lo < 0) and np.all(hi > 0)
    qp = obs.qparams()
    assert qp.scale.shape == (6,) and qp.axis == 1


# -- the histogram itself ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    bins=st.sampled_from([2, 3, 16, 2048]),
)
def test_histogram_is_independent_of_batching(values, cuts, bins):
    x = np.array(values, np.float32).reshape(-1, 1)
    one = StreamingHistogram(1, bins)
    one.update(x)
    many = StreamingHistogram(1, bins)
    for part in np.split(x, sorted(set(c for c in cuts if c < len(x)))):
        many.update(part)
    np.testing.assert_array_equal(many.counts, one.counts)
    assert (many.exp, many.offset) == (one.exp, one.offset)
    assert one.counts.sum() == len(x)
    e = one.edges()[0]
    assert e[0] <= min(x.min(), 0) and max(x.max(), 0) < e[-1]
    # every sample is in its bin
    idx = np.searchsorted(e, x[:, 0], side="right") - 1
    np.testing.assert_array_equal(np.bincount(idx, minlength=bins), one.counts[0])
    # resolution: the data (with 0) spans more than a quarter of the bins unless it is tiny
    span = max(x.max(), 0) - min(x.min(), 0)
    if span > 0 and bins >= 16 and np.abs(x).max() > 1e-30:
        assert span / one.width()[0] > bins / 4
