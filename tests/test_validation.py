"""Input validation at the entry points: inference inputs, calibration data, example inputs,
recipes, and calibration-vs-evaluation distribution checks."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

import edgequant as eq
from edgequant.calibrate import CalibrationWarning, DataStats, compare_distributions
from edgequant.errors import CalibrationError, InputError, RecipeError


@pytest.fixture(scope="module")
def model():
    return eq.models.digits_cnn(pretrained=True)


@pytest.fixture(scope="module")
def data():
    calib, test = eq.data.digits(batch_size=32, calib_size=64)
    return [x for x, _ in calib], torch.cat([x for x, _ in test])


@pytest.fixture(scope="module")
def q(model, data):
    return eq.quantize(model, "w8a8-pc", data[0])


def same_program(a, b) -> bool:
    if [(i.op, i.attrs) for i in a.instrs] != [(i.op, i.attrs) for i in b.instrs]:
        return False
    for i, j in zip(a.instrs, b.instrs):
        if any(not np.array_equal(i.arrays[k], j.arrays[k]) for k in i.arrays):
            return False
    return all(a.tensors[n].qparams == b.tensors[n].qparams or
               (float(a.tensors[n].qparams.scale) == float(b.tensors[n].qparams.scale)
                and int(a.tensors[n].qparams.zero_point) == int(b.tensors[n].qparams.zero_point))
               for n in a.tensors if a.tensors[n].qparams is not None)


# -- inference inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    torch.zeros(2, 1, 8, 8, dtype=torch.bool),
    torch.zeros(2, 1, 8, 8, dtype=torch.complex64),
    np.zeros((2, 1, 8, 8), np.complex128),
    np.array([[["a"] * 8] * 8] * 2),
    [[1, 2], [3]],  # ragged
    {"x": 1},
])
def test_run_rejects_non_numeric_inputs(q, bad):
    with pytest.raises(InputError, match="input"):
        q.run(bad)


def test_run_casts_integer_inputs_and_checks_shape_before_any_backend(q, data):
    x = (data[1][:4] * 16).round()
    np.testing.assert_array_equal(q.run(x.to(torch.int64)).numpy(), q.run(x).numpy())
    with pytest.raises(InputError, match=r"\(N, 1, 8, 8\)"):
        q.run(torch.rand(2, 8, 8), backend="onnxruntime")  # the shape check comes first, for every backend


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_nonfinite_inputs_error_by_default_and_run_when_allowed(q, data):
    x = data[1][:3].clone()
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(InputError, match="NaN or inf"):
        q.run(x)
    with pytest.raises(InputError, match="NaN or inf"):
        q.simulate(x)
    y = q.run(x, check_finite=False)
    assert y.shape == (3, 10)
    assert torch.equal(y[[0, 2]], q.run(x[[0, 2]]))  # other samples unaffected


# -- calibration data -------------------------------------------------------------------------------
def test_max_calib_samples_bounds_every_step_not_only_the_observers(model, data):
    """w8a8-pc's bias correction reads the calibration data again: it must see the same samples."""
    q_max = eq.quantize(model, "w8a8-pc", data[0], max_calib_samples=40)
    q_first = eq.quantize(model, "w8a8-pc", [data[0][0], data[0][1][:8]])
    assert same_program(q_max.program, q_first.program)
    q_all = eq.quantize(model, "w8a8-pc", data[0])
    assert not same_program(q_max.program, q_all.program)


def test_nonfinite_calibration_errors_naming_the_batch_or_is_dropped(model, data):
    calib = [b.clone() for b in data[0]]
    calib[1][[3, 5, 7], 0, 0, 0] = float("inf")
    with pytest.raises(CalibrationError, match="calibration batch 1 contains 3 NaN/inf"):
        eq.quantize(model, "w8a8-pc", calib)
    with pytest.warns(CalibrationWarning, match="dropped 3 calibration sample"):
        q_drop = eq.quantize(model, "w8a8-pc", calib, nonfinite="drop")
    keep = torch.ones(calib[1].shape[0], dtype=torch.bool)
    keep[[3, 5, 7]] = False
    q_clean = eq.quantize(model, "w8a8-pc", [calib[0], calib[1][keep]])
    assert same_program(q_drop.program, q_clean.program)
    assert q_drop.program.meta["calibration"]["dropped_nonfinite"] == 3
    assert q_drop.program.meta["calibration"]["samples"] == 61
    with pytest.raises(CalibrationError, match="nonfinite"):
        eq.quantize(model, "w8a8-pc", calib, nonfinite="ignore")
    all_bad = [torch.full((4, 1, 8, 8), float("nan"))]
    with pytest.raises(CalibrationError, match="empty after dropping"), pytest.warns(CalibrationWarning):
        eq.quantize(model, "w8a8-pc", all_bad, nonfinite="drop", example_input=data[0][0])


def test_calibration_batches_must_match_the_captured_shape(model, data):
    with pytest.raises(CalibrationError, match=r"calibration batch 1 has shape \(4, 1, 9, 9\).*\(N, 1, 8, 8\)"):
        eq.quantize(model, "w8a8-pc", [data[0][0], torch.rand(4, 1, 9, 9)])
    with pytest.raises(CalibrationError, match="calibration batch 0 has dtype torch.complex64"):
        eq.quantize(model, "w8a8-pc", [data[0][0].to(torch.complex64)], example_input=data[0][0])


def test_sample_count_limits_and_warnings(model, data):
    q = eq.quantize(model, "w8a8-pc", data[0], max_calib_samples=40)
    assert q.program.meta["calibration"]["samples"] == 40  # exact, even inside a batch
    with pytest.raises(CalibrationError, match="max_samples=0"):
        eq.quantize(model, "w8a8-pc", data[0], max_calib_samples=0)
    with pytest.warns(CalibrationWarning, match="single sample.*clip others"):
        eq.quantize(model, "w8a8-pc", [data[0][0][:1]])


def test_example_input_validation(model, data):
    with pytest.raises(InputError, match=r"non-empty \(N, \.\.\.\) batch"):
        eq.quantize(model, "dyn8", example_input=torch.rand(64))
    with pytest.raises(InputError, match="dtype torch.bool"):
        eq.quantize(model, "dyn8", example_input=torch.zeros(2, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(CalibrationError, match="NaN/inf"):
        eq.quantize(model, "dyn8", example_input=torch.full((2, 1, 8, 8), float("nan")))


# -- calibration vs evaluation data ----------------------------------------------------------------
def test_compare_distributions_quiet_on_matching_data(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compare_distributions(data[0], data[1]) == []


def test_compare_distributions_flags_shifted_scaled_data(data):
    calib, ev = data
    with pytest.warns(CalibrationWarning, match="differ from the evaluation data"):
        msgs = compare_distributions(calib, ev * 4 + 2)
    assert any("mean" in m for m in msgs) and any("std" in m for m in msgs) and any("clipped" in m for m in msgs)
    raw = compare_distributions(calib, ev * 255, warn=False)  # un-normalised images: a classic
    assert raw and all(m.startswith("input channel 0") for m in raw)
    with pytest.raises(CalibrationError, match="channels"):
        compare_distributions(calib, torch.rand(8, 3, 8, 8), warn=False)


def test_data_stats_stream_in_fixed_memory_independent_of_batching(data):
    x = torch.cat(data[0]).double()
    one = DataStats.of([x])
    many = DataStats.of(list(x.split(7)))
    assert one.count == many.count == x.shape[0]
    np.testing.assert_allclose(many.mean, one.mean, rtol=1e-12)
    np.testing.assert_allclose(many.std, one.std, rtol=1e-9)
    np.testing.assert_allclose(one.mean, [x.mean().item()], rtol=1e-12)
    np.testing.assert_allclose(one.std, [x.std(unbiased=False).item()], rtol=1e-9)
    assert many.mean.shape == (1,)  # per channel, not per sample


# -- recipes -------------------------------------------------------------------------------------------
W8 = eq.RECIPES["w8a8-pc"]


@pytest.mark.parametrize("recipe, match", [
    (dataclasses.replace(W8, name="bad-obs", activations=eq.TensorSpec(8, observer="entropy")), "observer 'entropy' is unknown"),
    (dataclasses.replace(W8, name="bad-method", options=(("weight_method", "magic"),)), "unknown weight_method 'magic'"),
    (dataclasses.replace(W8, name="pc-act", activations=eq.TensorSpec(8, per_channel=True)), "per-channel activations"),
    (W8.with_overrides(eq.LayerOverride("*", weight_bits=0)), "weight_bits=0"),
    (W8.with_overrides(eq.LayerOverride("fc*", act_bits=9)), "act_bits=9"),
    (dataclasses.replace(W8, name="opaque", options=(("hook", object()),)), "does not convert to JSON"),
])
def test_impossible_recipes_fail_before_any_work(recipe, match):
    with pytest.raises(RecipeError, match=match):
        eq.quantize(None, recipe)  # not even a model: the recipe is checked first


def test_override_matching_no_layer_warns(model, data):
    r = W8.with_overrides(eq.LayerOverride("convv*", weight_bits=4))
    with pytest.warns(UserWarning, match="'convv\\*' matches no conv/linear layer"):
        eq.quantize(model, r, data[0])
