"""Below 8 bits without retraining (issue 3): ACIQ, per-channel bit allocation, bias correction,
XNOR/ternary weights and binary activations, mixed precision by override, the low-bit recipes.

The ACIQ constants are re-derived here by minimising the paper's MSE expression directly (not the
code's root finder); recipe checks run the integer program (``q.run``) on the digits test split.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import erf

import edgequant as eq
from edgequant.kernels.binary import pack_bits, popcount, xnor_matmul
from edgequant.lowbit.bit_alloc import allocate_bits
from edgequant.observers import make_observer
from edgequant.observers.aciq import clip_ratio
from edgequant.packing import packed_nbytes
from edgequant.qmath import quantize
from edgequant.recipes import LayerOverride, Recipe, TensorSpec, low_bit_weights

# ../shared/DESIGN.md (Banner et al., arXiv 1810.05723): alpha*/b and alpha*/sigma for 1..8 bits
LAPLACE_TABLE = (1.86, 2.83, 3.89, 5.03, 6.20, 7.41, 8.64, 9.89)
GAUSS_TABLE = (1.24, 1.71, 2.15, 2.55, 2.93, 3.28, 3.61, 3.92)
NEW_RECIPES = ("w4a8", "w4a4", "w4a4-aciq", "w2a4-aciq", "w1a8-xnor", "w1a1-xnor", "w2a8-ternary")


# -- ACIQ ---------------------------------------------------------------------------------------
def paper_mse(alpha: float, bits: int, dist: str) -> float:
    """The paper's expected error (b = 1 / sigma = 1): clipping of both tails + alpha^2 / (3 4^M)."""
    rounding = alpha**2 / (3 * 4.0**bits)
    if dist == "laplace":
        return 2 * math.exp(-alpha) + rounding
    return ((alpha**2 + 1) * (1 - erf(alpha / math.sqrt(2)))
            - math.sqrt(2 / math.pi) * alpha * math.exp(-alpha**2 / 2) + rounding)


@pytest.mark.parametrize("dist,table", [("laplace", LAPLACE_TABLE), ("gauss", GAUSS_TABLE)])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_aciq_constants_rederived_from_the_paper_mse(dist, table, bits) -> None:
    best = minimize_scalar(paper_mse, bounds=(0.01, 30), args=(bits, dist), method="bounded",
                           options={"xatol": 1e-9}).x
    # the published table truncates to 2 decimals; the code solves the same optimum
    assert abs(best - table[bits - 1]) <= 0.01, (dist, bits, best)
    assert clip_ratio(bits, dist) == pytest.approx(best, abs=1e-4)
    # it is a minimum of the expression, not just a stationary point
    assert paper_mse(best, bits, dist) < min(paper_mse(0.9 * best, bits, dist), paper_mse(1.1 * best, bits, dist))


def _aciq(bits: int, dist: str = "laplace", **kw):
    return make_observer("aciq", bits=bits, dist=dist, **kw)


def test_aciq_signed_tensor_uses_m_bits_and_nonnegative_uses_m_plus_1() -> None:
    rng = np.random.default_rng(0)
    x = rng.laplace(0.2, 1.5, 60_000).astype(np.float32)  # one batch: b computed exactly
    ob = _aciq(4)
    ob.update(x)
    lo, hi = ob.range()
    b = np.mean(np.abs(x.astype(np.float64) - x.mean()))
    assert hi - lo == pytest.approx(2 * clip_ratio(4, "laplace") * b, rel=1e-3)
    assert lo == pytest.approx(x.mean() - clip_ratio(4, "laplace") * b, rel=1e-3, abs=1e-3)

    r = np.maximum(x, 0)  # post-ReLU: all 2^M levels on [0, alpha] = an (M+1)-bit quantizer
    ob = _aciq(4)
    ob.update(r)
    lo, hi = ob.range()
    b = np.mean(np.abs(r.astype(np.float64) - r.mean()))
    assert lo == 0.0
    assert hi == pytest.approx(clip_ratio(5, "laplace") * b, rel=1e-3)
    assert hi < r.max()
    streamed = _aciq(4)  # many batches: b from the streaming histogram
    for part in np.array_split(r, 6):
        streamed.update(part)
    assert streamed.range()[1] == pytest.approx(hi, rel=0.01)


def test_aciq_auto_picks_the_distribution_that_fits() -> None:
    rng = np.random.default_rng(1)
    lap = rng.laplace(0, 1, (20_000, 1))
    gau = rng.normal(0, 1, (20_000, 1))
    w = np.concatenate([lap, gau, 3 * gau, 0.1 * lap], axis=1).T.astype(np.float32)  # 4 channels in dim 0
    ob = _aciq(4, "auto", symmetric=True, narrow=True, axis=0)
    ob.update(w)
    assert list(ob.chosen_dist()) == ["laplace", "gauss", "gauss", "laplace"]
    _, b, sigma = ob.stats()
    lo, hi = ob.range()
    want = np.array([clip_ratio(4, "laplace") * b[0], clip_ratio(4, "gauss") * sigma[1],
                     clip_ratio(4, "gauss") * sigma[2], clip_ratio(4, "laplace") * b[3]])
    assert np.allclose(hi, want, rtol=0.02)  # symmetric: |mu| + alpha, mu ~ 0


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_aciq_clip_beats_minmax_mse_on_a_laplace_sample(bits) -> None:
    x = np.random.default_rng(2).laplace(0, 1, 100_000).astype(np.float32)

    def mse(observer: str) -> float:
        ob = make_observer(observer, bits=bits)
        ob.update(x)
        qp = ob.qparams()
        xq = (quantize(x, qp).astype(np.float64) - float(qp.zero_point)) * float(qp.scale)
        return float(np.mean((xq - x) ** 2))

    assert mse("aciq") < 0.5 * mse("minmax")


@pytest.fixture(scope="module")
def quantized(digits, digits_model):
    return {name: eq.quantize(digits_model, name, digits[0]) for name in NEW_RECIPES}


@pytest.fixture(scope="module")
def predictions(quantized, digits_test_x):
    """{recipe: (argmax of q.run, argmax of q.simulate)} on the digits test split."""
    x = digits_test_x.numpy()
    return {n: (np.asarray(q.run(x)).argmax(1), np.asarray(q.simulate(x)).argmax(1)) for n, q in quantized.items()}


# -- per-channel bit allocation -----------------------------------------------------------------
def test_bit_allocation_follows_two_thirds_power_law() -> None:
    alphas = 2.0 ** (1.5 * np.arange(4))  # each channel's alpha^(2/3) doubles: one bit more each
    widths = allocate_bits(alphas, 4.5)
    assert list(widths) == [3, 4, 5, 6]
    levels = 2.0**widths
    assert np.allclose(levels / levels.sum(), alphas ** (2 / 3) / np.sum(alphas ** (2 / 3)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=64), st.sampled_from([1.5, 2.0, 3.0, 4.0, 5.25, 8.0]))
def test_bit_allocation_keeps_the_budget_exactly(alphas, mean_bits) -> None:
    a = np.array(alphas)
    m = allocate_bits(a, mean_bits)
    assert m.sum() == round(len(a) * mean_bits)
    assert m.min() >= 1 and m.max() <= 8
    # larger clip -> at least as many bits; integer widths stay within one bit of the real optimum
    smaller = a[:, None] < a[None, :]  # (i, j): alpha_i < alpha_j  =>  M_i <= M_j
    assert np.all((m[:, None] <= m[None, :]) | ~smaller)
    real = (2 / 3) * np.log2(a)
    free = (m >= 3) & (m <= 6)  # widths 1..2 / 7..8 may come from a real width clamped at 1 / 8
    if free.sum() >= 2:
        resid = m[free] - real[free]
        assert resid.max() - resid.min() < 2.0


def test_bit_allocation_runs_in_the_interpreter_and_size_counts_packed_bits(quantized) -> None:
    q = quantized["w2a4-aciq"]
    alloc = [i for i in q.program.instrs if "channel_bits" in i.attrs]
    assert len(alloc) == 5
    mixed = False
    for ins in alloc:
        w, cb = ins.arrays["weight"], np.array(ins.attrs["channel_bits"])
        assert cb.sum() == round(2.0 * len(cb))  # the recipe's 2-bit average, exactly
        mixed |= len(set(cb)) > 1
        rows = w.reshape(w.shape[0], -1).astype(np.int64)
        for r, b in zip(rows, cb):
            lim = 1 if b == 1 else 2 ** (b - 1) - 1
            assert np.abs(r).max() <= lim and (b > 1 or np.all(np.abs(r) == 1))
        assert ins.attrs["packed_weight_bytes"] == sum(packed_nbytes(rows.shape[1], int(b)) for b in cb) + len(cb)
        assert ins.attrs["weight_bits"] == cb.max()
    assert mixed, "no layer got mixed widths; the test no longer exercises per-channel widths"
    total = sum(a.nbytes for i in q.program.instrs for k, a in i.arrays.items()
                if k not in ("weight", "m0", "shift", "multiplier"))
    total += sum(i.attrs.get("packed_weight_bytes", 0) for i in q.program.instrs)
    total += 8 * sum(t.qparams is not None for t in q.program.tensors.values())
    assert q.size_bytes == total


# -- bias correction ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_bias_correction_reduces_output_mean_error(kind) -> None:
    torch.manual_seed(0)
    if kind == "linear":
        m, x, axes = torch.nn.Sequential(torch.nn.Linear(64, 16)), torch.rand(512, 64), (0,)
    else:
        m, x, axes = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1)), torch.rand(256, 4, 8, 8), (0, 2, 3)
    with torch.no_grad():
        w = m[0].weight  # skewed per channel: 2-bit rounding shifts each channel's mean
        w.copy_(torch.distributions.Laplace(0.0, 0.1).sample(w.shape) + 0.03 * torch.randn(w.shape[0], *([1] * (w.ndim - 1))))
        y = m(x).double().numpy()

    def mean_err(mode):
        opts = (("bias_correction", mode),) if mode else ()
        r = Recipe(f"w2a8-{mode}", "static", weights=low_bit_weights(2), activations=TensorSpec(bits=8), options=opts)
        yq = np.asarray(eq.quantize(m, r, [x]).run(x.numpy()), np.float64)
        return float(np.abs(yq.mean(axis=axes) - y.mean(axis=axes)).mean())

    none, banner, empirical = mean_err(None), mean_err("banner"), mean_err("empirical")
    assert banner < 0.25 * none
    assert empirical < 0.1 * none


# -- binary ---------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(0, 2**32 - 1))
def test_popcount_identity_equals_the_dot_product(n, seed) -> None:
    rng = np.random.default_rng(seed)
    a = rng.choice([-1, 1], size=n)
    b = rng.choice([-1, 1], size=n)
    pa, pb = pack_bits(a[None] > 0)[0], pack_bits(b[None] > 0)[0]
    assert n - 2 * int(popcount(pa ^ pb).sum()) == int(a @ b)  # XNOR-Net: n - 2 popcount(a XOR b)
    x = rng.choice([-1, 0, 1], size=(5, n))  # 0 = padding taps (masked)
    w = rng.choice([-1, 1], size=(3, n))
    assert np.array_equal(xnor_matmul(x, w), x @ w.T)


@pytest.mark.parametrize("zx", [0, -1, 1])
def test_xnor_conv_fast_path_equals_the_popcount_definition(zx) -> None:
    """The interpreter's XNOR conv runs as an exact float32 conv; the popcount form is its spec."""
    from edgequant.kernels.binary import xnor_accumulate
    from edgequant.kernels.conv import float_accumulate
    from edgequant.program import Instr

    rng = np.random.default_rng(zx + 10)
    w = rng.choice([-1, 1], size=(6, 4, 3, 3)).astype(np.int8)
    x = rng.choice([-1, 1], size=(2, 8, 7, 5)).astype(np.int8)
    ins = Instr("conv_xnor", ["x"], "y", attrs={"stride": (2, 1), "padding": (1, 0, 1, 1), "dilation": (1, 1),
                                                "groups": 2, "dims": 2}, arrays={"weight": w})
    fast = float_accumulate(ins, x, zx)
    assert fast is not None
    np.testing.assert_array_equal(fast.astype(np.int64), xnor_accumulate(ins, x, zx))


def _gemms(q):
    return [i for i in q.program.instrs if i.op.startswith(("conv", "linear"))]


def _module_of(q):
    return {n.name: n.module for n in q.graph.nodes}


def test_xnor_weights_are_alpha_sign_w_and_first_last_stay_8bit(quantized, digits_model) -> None:
    q = quantized["w1a8-xnor"]
    by = q.graph.by_name()
    gemms = _gemms(q)
    assert [i.attrs["weight_bits"] for i in gemms] == [8, 1, 1, 1, 8]
    for ins in gemms[1:-1]:
        w = by[ins.node].params["weight"].astype(np.float64)  # BN-folded float weight
        sign = np.where(w >= 0, 1, -1)
        assert np.array_equal(ins.arrays["weight"], sign)
        alpha = np.abs(w).reshape(w.shape[0], -1).mean(axis=1)
        assert np.allclose(ins.arrays["w_scale"], alpha, rtol=1e-6)
    # w1a1: the binary-input GEMMs use the XNOR-popcount kernel
    ops = [i.op for i in _gemms(quantized["w1a1-xnor"])]
    assert ops == ["conv", "conv_xnor", "conv_xnor", "linear_xnor", "linear"]


def test_ternary_weights_are_minus_zero_plus(quantized) -> None:
    for ins in _gemms(quantized["w2a8-ternary"])[1:-1]:
        assert ins.attrs["weight_bits"] == 2
        assert set(np.unique(ins.arrays["weight"])) <= {-1, 0, 1}


def test_first_last_width_is_configurable(digits, digits_model) -> None:
    base = eq.RECIPES["w1a8-xnor"]
    for fl, want in ((4, [4, 1, 1, 1, 4]), (None, [1, 1, 1, 1, 1])):
        opts = tuple((k, v) for k, v in base.options if k != "first_last_bits") + (("first_last_bits", fl),)
        q = eq.quantize(digits_model, dataclasses.replace(base, name=f"w1a8-fl{fl}", options=opts), digits[0],
                        max_calib_samples=128)
        assert [i.attrs["weight_bits"] for i in _gemms(q)] == want


def test_override_all_4bit_classifier_8bit(digits, digits_model) -> None:
    r = eq.RECIPES["w4a4"].with_overrides(LayerOverride("classifier.*", weight_bits=8, act_bits=8))
    q = eq.quantize(digits_model, r, digits[0], max_calib_samples=128)
    mod = _module_of(q)
    for ins in _gemms(q):
        classifier = mod[ins.node].startswith("classifier.")
        assert ins.attrs["weight_bits"] == (8 if classifier else 4), mod[ins.node]
        assert q.program.tensors[ins.output].qparams.bits == (8 if classifier else 4)
        assert np.abs(ins.arrays["weight"]).max() > (7 if classifier else 0)


# -- the recipes through the integer program -------------------------------------------------------
@pytest.mark.parametrize("name", NEW_RECIPES)
def test_run_and_simulate_agree(predictions, name) -> None:
    """Sub-8-bit outputs are requantized with single rounding (gemmlowp's double rounding moved
    3-9% of w2a4 outputs by a step: agreement was 97.2%); tests/test_single_rounding.py."""
    run, sim = predictions[name]
    agree = np.mean(run == sim)
    assert agree >= 0.99, agree


def test_run_and_simulate_agree_single_rounding(quantized, digits_test_x) -> None:
    q = quantized["w2a4-aciq"]
    x = digits_test_x.numpy()
    run = np.asarray(q.run(x, rounding="onnxruntime")).argmax(1)
    sim = np.asarray(q.simulate(x, rounding="onnxruntime")).argmax(1)
    assert np.mean(run == sim) >= 0.99


@pytest.mark.parametrize("name,bound", [("w4a8", 0.14), ("w4a4", 0.14), ("w4a4-aciq", 0.14), ("w2a4-aciq", 0.08),
                                        ("w2a8-ternary", 0.08), ("w1a8-xnor", 0.05), ("w1a1-xnor", 0.05)])
def test_sizes(quantized, name, bound) -> None:
    q = quantized[name]
    assert q.size_bytes / q.float_size_bytes <= bound


def test_w4a4_aciq_close_to_fp32(predictions, digits, digits_model, digits_test_x) -> None:
    y = torch.cat([t for _, t in digits[1]]).numpy()
    with torch.no_grad():
        fp = np.mean(digits_model(digits_test_x).argmax(1).numpy() == y)
    assert np.mean(predictions["w4a4-aciq"][0] == y) >= fp - 0.02
    assert np.mean(predictions["w4a8"][0] == y) >= fp - 0.01
    # 2 bits: the full method keeps most of the accuracy (naive min/max W2A4 falls to ~0.6)
    assert np.mean(predictions["w2a4-aciq"][0] == y) >= 0.85
    # binary activations calibrated on the binarized upstream (float-calibrated: chance, 0.12)
    assert np.mean(predictions["w1a1-xnor"][0] == y) >= 0.35


def _recalibrate_binary_per_tensor(graph, recipe, act_qp, calib) -> None:
    """The former quadratic definition: one forward of the calibration data per binary tensor."""
    from edgequant.calibrate import iter_batches
    from edgequant.graph_exec import GraphModule
    from edgequant.lowbit.bias_correction import dequantized_weight
    from edgequant.lowbit.binary_act import is_binary_tensor
    from edgequant.lowbit.binary_calib import fake_binarize
    from edgequant.lowbit.edges import node_bits

    binary = [n.name for n in graph.nodes if is_binary_tensor(act_qp.get(n.name))]
    g = graph.copy()
    for n in g.nodes:
        if n.op in ("conv", "linear") and node_bits(graph, recipe, n)[0] is not None:
            n.params["weight"] = dequantized_weight(n, recipe, node_bits(graph, recipe, n)[0]).astype(np.float32)
    gm, done, spec = GraphModule(g), set(), recipe.activations
    for name in binary:
        ob = make_observer(spec.observer, bits=1, signed=True, symmetric=spec.symmetric, narrow=spec.narrow)

        def hook(node, y):
            if node.name == name:
                ob.update(y.numpy())
            return fake_binarize(y, act_qp[node.name]) if node.name in done else y

        with torch.no_grad():
            for x in iter_batches(calib):
                gm(x.float(), hook)
        act_qp[name] = ob.qparams()
        done.add(name)


def test_binary_calibration_in_one_pass_equals_the_per_tensor_rerun(digits, digits_model, monkeypatch) -> None:
    """The layer-wise pass gives every 1-bit tensor the qparams the quadratic re-run gave, and it
    runs each graph node once per batch."""
    from edgequant import api, graph_exec
    from edgequant.lowbit import binary_calib

    recipe = eq.RECIPES["w1a1-xnor"]
    seen = {}

    def capture(graph, r, act_qp, calib):
        seen["args"] = (graph.copy(), r, dict(act_qp), calib)
        return graph

    monkeypatch.setattr(api, "PTQ_STEPS", [capture])
    eq.quantize(digits_model, recipe, digits[0])  # stops short of the low-bit step: its inputs are kept
    graph, r, act_qp, calib = seen["args"]
    from edgequant.lowbit.edges import recalibrate_edges

    recalibrate_edges(graph, r, act_qp, calib)
    want, got = dict(act_qp), dict(act_qp)
    _recalibrate_binary_per_tensor(graph, r, want, calib)
    calls = []
    real = graph_exec.run_node
    monkeypatch.setattr(binary_calib, "run_node", lambda n, a, p: calls.append(n.name) or real(n, a, p))
    binary_calib.recalibrate_binary(graph, r, got, calib)
    binary = [n for n in want if want[n] is not act_qp[n]]
    assert len(binary) >= 2
    for n in want:
        assert (float(want[n].scale), int(want[n].zero_point)) == (float(got[n].scale), int(got[n].zero_point)), n
    n_batches = sum(1 for _ in calib)
    assert max(calls.count(n) for n in set(calls)) == n_batches  # no node ran twice on a batch


# -- depthwise nets: what a recipe keeps at 8 bits (issue 14) ----------------------------------------
def test_keep8_recipe_keeps_depthwise_and_edges_at_8_bits_and_beats_naive(digits, digits_test_x) -> None:
    """``depthwise_bits`` widens exactly the depthwise convs; the recipe is never below naive W4A8."""
    from edgequant.lowbit.edges import is_depthwise

    model = eq.models.mobilenet_v2_digits(pretrained=True)
    calib = [x for x, _ in digits[0]]
    naive, keep = eq.quantize(model, "w4a8", calib), eq.quantize(model, "w4a8-keep8", calib)
    by = keep.graph.by_name()
    gemms = _gemms(keep)
    dw = [i for i in gemms if is_depthwise(by[i.node])]
    assert dw and all(i.attrs["weight_bits"] == 8 for i in dw)
    assert gemms[0].attrs["weight_bits"] == 8 and gemms[-1].attrs["weight_bits"] == 8
    inner = [i for i in gemms[1:-1] if not is_depthwise(by[i.node])]
    assert inner and all(i.attrs["weight_bits"] == 4 for i in inner)
    assert all(i.attrs["weight_bits"] == 4 for i in _gemms(naive))
    with torch.no_grad():
        ref = model(digits_test_x).argmax(1).numpy()
    agree = {k: float(np.mean(q.run(digits_test_x.numpy()).argmax(1) == ref)) for k, q in (("naive", naive), ("keep", keep))}
    assert agree["keep"] >= agree["naive"] and agree["keep"] > 0.97, agree
    naive4, keep4 = eq.quantize(model, "w4a4", calib), eq.quantize(model, "w4a4-keep8", calib)
    a4 = {k: float(np.mean(q.run(digits_test_x.numpy()).argmax(1) == ref)) for k, q in (("naive", naive4), ("keep", keep4))}
    assert a4["keep"] >= a4["naive"], a4


# -- activation clips by output error (act_clip="search") -----------------------------------------
@pytest.mark.parametrize("name,recipe", [("mobilenet_v2_digits", "w4a4"), ("resnet_digits", "w8a8-pc")])
def test_clip_search_never_has_more_output_error_than_minmax(digits, name, recipe) -> None:
    """Every searched tensor's chosen grid scores no worse than min/max on the consumer outputs, the
    chosen grid is the one the program gets, and the program still runs as its simulation."""
    from edgequant.api import capture_prepared
    from edgequant.calibrate import calibrate
    from edgequant.lowbit.clip_search import search_clips

    calib, test = digits
    x = torch.cat([b for b, _ in test])
    model = getattr(eq.models, name)(pretrained=True)
    r = eq.get_recipe(recipe)
    graph = capture_prepared(model, x[:2])
    act_qp = calibrate(graph, r, calib)
    report = search_clips(graph, r, act_qp, calib, samples=128)
    assert len(report) >= 3
    changed = 0
    for t, rep in report.items():
        errs = rep["errors"]
        assert errs[rep["chosen"]] <= errs["minmax"] and errs[rep["chosen"]] <= errs["calibrated"], t
        changed += rep["chosen"] != "calibrated"
    assert changed >= 1  # the search does pick something other than the recipe's observer somewhere
    searched = dataclasses.replace(r, name=r.name + "-search",
                                   options=r.options + (("act_clip", "search"), ("clip_search_samples", 128)))
    q = eq.quantize(model, searched, calib)
    some = next(t for t, rep in report.items() if rep["chosen"] != "calibrated")
    assert np.isclose(float(q.program.tensors[some].qparams.scale), float(act_qp[some].scale))
    got, sim = np.asarray(q.run(x[:128].numpy())), np.asarray(q.simulate(x[:128].numpy()))
    assert (got.argmax(1) == sim.argmax(1)).mean() >= 0.98


def test_clip_search_option_is_checked(digits) -> None:
    calib, _ = digits
    bad = dataclasses.replace(eq.get_recipe("w8a8"), name="bad", options=(("act_clip", "sometimes"),))
    with pytest.raises(eq.errors.RecipeError, match="act_clip"):
        eq.quantize(eq.models.digits_cnn(pretrained=True), bad, calib)


# -- sequential empirical bias correction (bias_correction="sequential") ----------------------------
def test_sequential_bias_correction_matches_output_means(digits) -> None:
    """With upstream quantization accounted for, the program's mean logits on the calibration
    samples sit closer to the float model's than with the float-input (DFQ) correction or none."""
    calib, _ = digits
    x = torch.cat([b for b, _ in calib])[:32]
    model = eq.models.mobilenet_v2_digits(pretrained=True)
    with torch.no_grad():
        ref = model(x).numpy().mean(axis=0)
    base = eq.get_recipe("w4a4")
    gap = {}
    for mode in ("none", "empirical", "sequential"):
        r = dataclasses.replace(base, name=f"w4a4-{mode}", options=(("bias_correction", mode),))
        q = eq.quantize(model, r, [x])
        gap[mode] = float(np.abs(np.asarray(q.run(x.numpy())).mean(axis=0) - ref).mean())
    assert gap["sequential"] < gap["empirical"] and gap["sequential"] < 0.5 * gap["none"], gap


def test_sequential_bias_correction_options_are_checked(digits) -> None:
    calib, _ = digits
    bad = dataclasses.replace(eq.get_recipe("w8a8-pc"), name="bad",
                              options=(("bias_correction", "sequential"), ("bias_correction_samples", 0)))
    with pytest.raises(eq.errors.RecipeError, match="bias_correction_samples"):
        eq.quantize(eq.models.digits_cnn(pretrained=True), bad, calib)
    dyn = dataclasses.replace(eq.get_recipe("dyn8"), name="bad-dyn", options=(("bias_correction", "sequential"),))
    with pytest.raises(eq.errors.RecipeError, match="static"):
        eq.quantize(eq.models.digits_cnn(pretrained=True), dyn, calib)
