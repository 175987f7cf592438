"""Reconstruction PTQ (AdaRound, BRECQ blocks, QDrop): the rounding maths, the block split, the
program it produces, the knobs (overrides, bit allocation, budget) and the calibration cache."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import edgequant as eq
from edgequant.api import capture_prepared
from edgequant.errors import RecipeError
from edgequant.recipes import LayerOverride
from edgequant.reconstruct import (AdaRoundWeight, BetaSchedule, find_units, make_recipe, pipeline,
                                   rectified_sigmoid)
from edgequant.reconstruct.adaround import GAMMA, ZETA, init_v
from edgequant.reconstruct.cache import StoreSpace, TensorStore, map_stores

RECON_RECIPES = ["w4a8-adaround", "w4a4-brecq", "w4a4-brecq-qdrop", "w2a4-brecq", "w2a4-brecq-qdrop", "w4a8-gptq",
                 "w4a4-gptq"]
ITERS = 20  # small budget: enough to move the rounding, fast enough for CI
FEW = 128   # calib_samples for tests that check structure, not quality (boundary tensors cost time)


@pytest.fixture(scope="module")
def digits():
    calib, test = eq.data.digits()
    x = torch.cat([b for b, _ in test])
    return calib, x


@pytest.fixture(scope="module")
def cnn():
    return eq.models.digits_cnn(pretrained=True)


def _instr(q, name):
    return next(i for i in q.program.instrs if i.output == name)


def _nearest(r):
    """The same grid (scales, widths, activation clips) with nearest rounding: the baseline."""
    return dataclasses.replace(r, name=r.name + "-nearest", options=(("weight_method", "observer"),))


def _gemm_nodes(q):
    return [n for n in q.graph.nodes if n.op in ("conv", "linear")]


# -- AdaRound maths --------------------------------------------------------------------------------
def test_rectified_sigmoid_bounds_and_inverse():
    v = torch.linspace(-30, 30, 2001)
    h = rectified_sigmoid(v)
    assert float(h.min()) == 0.0 and float(h.max()) == 1.0  # reaches the ends exactly (the stretch)
    assert torch.all(h[1:] >= h[:-1])
    # gamma=-0.1, zeta=1.1: h = sigmoid * 1.2 - 0.1, so h(0) = 0.5 and the clip starts at sigmoid = 1/12
    assert (ZETA, GAMMA) == (1.1, -0.1)
    assert float(rectified_sigmoid(torch.tensor(0.0))) == pytest.approx(0.5)
    assert float(rectified_sigmoid(torch.tensor(float(np.log(1 / 11))))) == pytest.approx(0.0, abs=1e-6)
    frac = torch.rand(1000, dtype=torch.float64).float()
    assert torch.allclose(rectified_sigmoid(init_v(frac)), frac, atol=1e-5)


def test_regulariser_zero_at_hard_rounding_and_positive_between():
    w = np.array([[0.1, 0.26, -0.5, 0.74]], np.float32)
    a = AdaRoundWeight(w, np.array([0.25], np.float32), np.array([-7.0]), np.array([7.0]))
    assert a.regulariser(2.0).item() > 0
    with torch.no_grad():
        a.v.copy_(torch.tensor([[-20.0, 20.0, -20.0, 20.0]]))
    assert a.regulariser(2.0).item() == 0.0
    assert a.integers().tolist() == [[0, 2, -2, 3]]  # floor(w/s) + [V >= 0]


def test_soft_weight_starts_at_float_weight_and_stays_on_the_grid_range():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    s = np.abs(w).max(axis=1) / 3
    a = AdaRoundWeight(w, s, -np.full(3, 3.0), np.full(3, 3.0))
    assert torch.allclose(a(), torch.as_tensor(w), atol=1e-5)
    with torch.no_grad():
        a.v.normal_(0, 10)
    q = a.integers()
    assert q.dtype == np.int8 and np.abs(q).max() <= 3
    assert np.all(np.abs(q - np.floor(w / s[:, None])) <= 1)


def test_beta_schedule_warmup_then_anneal_20_to_2():
    sched = BetaSchedule(100)
    assert [sched(i) for i in (0, 19)] == [(False, 20.0), (False, 20.0)]  # 20% warm-up: no regulariser
    on, beta = sched(20)
    assert on and beta == pytest.approx(20.0)
    betas = [sched(i)[1] for i in range(20, 100)]
    assert all(b1 >= b2 for b1, b2 in zip(betas, betas[1:]))
    assert betas[-1] == pytest.approx(2.0 + 18.0 / 80)
    assert BetaSchedule(10).warm == 2


# -- block detection ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,blocks", [("resnet_digits", 3), ("mobilenet_v2_digits", 4)])
def test_units_split_residual_blocks(name, blocks):
    g = capture_prepared(getattr(eq.models, name)(pretrained=True), torch.zeros(2, 1, 8, 8))
    units = find_units(g)
    kinds = [u.kind for u in units]
    assert kinds.count("block") == blocks
    for u in units:
        if u.kind == "block":  # a residual block ends at its add and holds its convs
            assert u.nodes[-1].op == "add" and len(u.layers) >= 2
    # consecutive, every node after the input once, every conv/linear in exactly one unit
    assert units[0].entry == g.input
    assert all(b.entry == a.output for a, b in zip(units, units[1:]))
    assert [n.name for u in units for n in u.nodes] == [n.name for n in g.nodes[1:]]
    assert units[-1].output == g.output


# -- the program ---------------------------------------------------------------------------------
def test_adaround_learned_integers_in_program_and_lower_layer_error(digits, cnn):
    calib, x = digits
    q = eq.reconstruct.quantize(cnn, "w4a8-adaround", calib, iterations=80, progress=False)
    base = eq.quantize(cnn, _nearest(make_recipe(4, 8, "adaround")), calib)
    n = _gemm_nodes(q)[0]
    ins = _instr(q, n.name)
    # ordinary integers on the base method's scale, in the same program
    assert np.array_equal(ins.arrays["weight"], n.attrs["learned_weight"])
    assert np.array_equal(ins.arrays["w_scale"], _instr(base, n.name).arrays["w_scale"])
    assert ins.attrs["weight_bits"] == 4 and np.abs(ins.arrays["weight"]).max() <= 7
    nearest = _instr(base, n.name).arrays["weight"]
    assert (ins.arrays["weight"] != nearest).any()  # the rounding moved
    # first layer's output error on held-out digits: learned < nearest rounding
    from edgequant.graph_exec import conv_float

    s = ins.arrays["w_scale"].reshape(-1, 1, 1, 1).astype(np.float32)
    ref = conv_float(x, torch.as_tensor(n.params["weight"]), None, n.attrs)

    def err(wi):
        y = conv_float(x, torch.as_tensor(wi.astype(np.float32) * s), None, n.attrs)
        return float((y - ref).pow(2).mean())

    assert err(ins.arrays["weight"]) < 0.97 * err(nearest)  # measured 0.92x at 80 steps


@pytest.mark.parametrize("recipe", RECON_RECIPES)
def test_run_matches_simulation_for_each_recipe(digits, cnn, recipe):
    calib, x = digits
    q = eq.reconstruct.quantize(cnn, recipe, calib, iterations=ITERS, progress=False, calib_samples=FEW)
    assert q.recipe.name == recipe and any("learned_weight" in n.attrs for n in _gemm_nodes(q))
    run = np.asarray(q.run(x.numpy())).argmax(1)
    sim = np.asarray(q.simulate(x.numpy())).argmax(1)
    assert (run == sim).mean() >= 0.99
    # the exact-rounding mode of the same program is the simulation's arithmetic
    run_ort = np.asarray(q.run(x.numpy(), rounding="onnxruntime")).argmax(1)
    sim_ort = np.asarray(q.simulate(x.numpy(), rounding="onnxruntime")).argmax(1)
    assert (run_ort == sim_ort).mean() >= 0.99
    meta = q.program.meta["reconstruct"]
    assert meta["units"] and all(u["seconds"] >= 0 for u in meta["units"])


def test_brecq_learned_activation_steps_are_the_programs(digits, cnn):
    """BRECQ learns every activation step inside a unit (LSQ, zero point kept) and the program is
    lowered with the learned grids; learn_act_scale=False keeps the calibrated ones."""
    from edgequant.calibrate import calibrate

    calib, x = digits
    q = eq.reconstruct.quantize(cnn, "w4a4-brecq", calib, iterations=ITERS, progress=False, calib_samples=FEW)
    learned = pipeline.LAST_RESULT.act_qp
    cal = calibrate(capture_prepared(cnn, x[:2]), q.recipe, calib)
    assert set(learned) == {n.name for n in q.graph.nodes[1:] if n.name in cal}  # all but the input
    for k, qp in learned.items():
        prog = q.program.tensors[k].qparams
        assert float(prog.scale) == float(qp.scale) and int(prog.zero_point) == int(cal[k].zero_point)
        assert 0.5 < float(qp.scale) / float(cal[k].scale) < 2.0
    assert sum(float(qp.scale) != float(cal[k].scale) for k, qp in learned.items()) >= len(learned) - 1
    fixed = eq.reconstruct.quantize(cnn, "w4a4-brecq", calib, iterations=2, progress=False, learn_act_scale=False,
                                    calib_samples=FEW)
    assert pipeline.LAST_RESULT.act_qp == {}
    assert all(float(fixed.program.tensors[k].qparams.scale) == float(cal[k].scale) for k in learned)
    ada = eq.reconstruct.quantize(cnn, "w4a8-adaround", calib, iterations=2, progress=False, calib_samples=FEW)
    assert pipeline.LAST_RESULT.act_qp == {} and ada.recipe.option("learn_act_scale") is None  # AdaRound: off


def test_reconstruction_beats_nearest_rounding_on_digits(digits, cnn):
    """W2A4 nearest rounding on the MSE grid loses points; 60 block steps per unit win some back."""
    calib, x = digits
    y = cnn(x).argmax(1).numpy()
    near = eq.quantize(cnn, _nearest(make_recipe(2, 4, "brecq")), calib)
    q = eq.reconstruct.quantize(cnn, "w2a4-brecq", calib, iterations=60, progress=False)
    agree = lambda m: (np.asarray(m.run(x.numpy())).argmax(1) == y).mean()  # noqa: E731
    assert agree(q) > agree(near) + 0.01  # measured: 93.7% -> 95.9% (60 steps per unit)


def test_per_layer_override_and_bit_allocation(digits, cnn):
    calib, _ = digits
    first = _gemm_nodes(eq.quantize(cnn, "w4a4", calib))[0]
    r = make_recipe(4, 4, "brecq", iterations=10, overrides=(LayerOverride(first.module, weight_bits=8),),
                    reconstruct_base="bit_alloc", name="t-override")
    q = eq.quantize(cnn, r, calib)
    for n in _gemm_nodes(q):
        ins = _instr(q, n.name)
        assert np.array_equal(ins.arrays["weight"], n.attrs["learned_weight"])
        bits = ins.attrs["channel_bits"]  # bit allocation's per-channel widths survive reconstruction
        assert len(bits) == ins.arrays["weight"].shape[0] and "packed_weight_bytes" in ins.attrs
        lim = np.array([(1 << (b - 1)) - 1 for b in bits])
        assert np.all(np.abs(ins.arrays["weight"]).reshape(len(bits), -1).max(axis=1) <= np.maximum(lim, 1))
        want = 8 if n.name == first.name else 4
        assert n.attrs["learned_bits"] == want
        assert np.mean(bits) == pytest.approx(want, abs=0.51)
    assert np.abs(_instr(q, first.name).arrays["weight"]).max() > 7  # reconstructed on the 8-bit grid


def test_one_bit_channels_learn_the_sign_never_zero():
    """A 1-bit channel's grid is {-1, +1}: learned rounding picks a sign and starts at the nearer one."""
    w = np.array([[0.3, -0.2, 0.05, -0.9], [0.3, -0.2, 0.05, -0.9]], np.float32)
    a = AdaRoundWeight(w, np.array([0.5, 0.25], np.float32), np.array([-1.0, -1.0]), np.array([1.0, 1.0]),
                       binary=np.array([True, False]))
    assert a.integers()[0].tolist() == [1, -1, 1, -1]   # sign(w): initial h = (w/s + 1) / 2
    with torch.no_grad():
        a.v.normal_(0, 10)
    q = a.integers()
    assert set(q[0].tolist()) <= {-1, 1} and set(q[1].tolist()) <= {-1, 0, 1}  # the 2-bit row may round to 0
    assert torch.equal(a(hard=True)[0].abs(), torch.full((4,), 0.5))  # hard weights: exactly +-scale


def test_bit_allocation_one_bit_channels_stay_binary_and_save(digits, cnn, tmp_path):
    """W2 with per-channel bit allocation gives some 1-bit channels; reconstruction must keep them on
    {-1, +1} (a 0 cannot be packed in 1 bit: q.save used to raise ArtifactError)."""
    calib, x = digits
    r = make_recipe(2, 4, "brecq", iterations=10, reconstruct_base="bit_alloc", name="t-1bit",
                    calib_samples=FEW)
    q = eq.quantize(cnn, r, calib)
    ones = 0
    for n in _gemm_nodes(q):
        bits = np.asarray(_instr(q, n.name).attrs["channel_bits"])
        w = _instr(q, n.name).arrays["weight"].reshape(len(bits), -1)
        assert np.all(np.abs(w[bits == 1]) == 1), n.name
        ones += int((bits == 1).sum())
    assert ones > 0  # the case is exercised
    q.save(tmp_path / "q")
    back = eq.load(tmp_path / "q")
    assert np.array_equal(np.asarray(back.run(x[:64].numpy())), np.asarray(q.run(x[:64].numpy())))


def test_bad_options_are_recipe_errors(digits, cnn):
    calib, _ = digits
    for opts in ({"qdrop": 1.5}, {"iterations": 0}, {"requant": "float"}, {"bias_correction": "banner"}):
        with pytest.raises(RecipeError):
            eq.reconstruct.quantize(cnn, "w4a4-brecq", calib, iterations=opts.pop("iterations", 2), progress=False, **opts)
    with pytest.raises(RecipeError, match="learn_act_scale"):
        eq.reconstruct.quantize(cnn, "w4a8-adaround", calib, iterations=2, progress=False, learn_act_scale=True)
    with pytest.raises(RecipeError, match="reconstruct"):
        eq.quantize(cnn, make_recipe(4, 4, "brecq", reconstruct="nope"), calib)


# -- calibration cache ------------------------------------------------------------------------------
def test_store_spills_to_disk_over_budget_and_cleans_up(tmp_path):
    space = StoreSpace(memory_bytes=1000, directory=str(tmp_path))
    small = TensorStore(space, (10, 5))  # 200 bytes: RAM
    big = TensorStore(space, (100, 5))   # 2000 bytes: over the budget left, a memmap on disk
    assert not small.on_disk and big.on_disk and big.path.exists()
    data = torch.arange(500, dtype=torch.float32).reshape(100, 5)
    for b in data.split(32):
        big.append(b)
    assert torch.equal(big.get(np.array([3, 1, 99])), data[[1, 3, 99]])
    doubled = map_stores(space, [big], lambda t: 2 * t, batch_size=16)
    assert doubled.on_disk and torch.equal(doubled.get(np.arange(100)), 2 * data)
    big.release()
    doubled.release()
    small.release()
    assert space.disk_bytes == 0 and space.memory_left == 1000
    space.close()
    assert list(tmp_path.iterdir()) == []


def test_reconstruction_from_disk_equals_in_memory(digits, cnn, tmp_path):
    """memory_mb=0 streams every boundary tensor through disk: same learned integers, files removed."""
    calib, _ = digits
    kw = dict(iterations=4, progress=False, calib_samples=FEW)
    in_mem = eq.reconstruct.quantize(cnn, "w4a4-brecq-qdrop", calib, **kw)
    assert pipeline.LAST_RESULT.disk_bytes_peak == 0
    on_disk = eq.reconstruct.quantize(cnn, "w4a4-brecq-qdrop", calib, memory_mb=0, cache_dir=str(tmp_path), **kw)
    assert pipeline.LAST_RESULT.disk_bytes_peak > 0
    assert on_disk.program.meta["reconstruct"]["disk_bytes_peak"] > 0
    for a, b in zip(_gemm_nodes(in_mem), _gemm_nodes(on_disk)):
        assert np.array_equal(a.attrs["learned_weight"], b.attrs["learned_weight"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["digits_cnn", "mobilenet_v2_digits"])
def test_reconstruction_sim_is_the_integer_program_per_layer(digits, name):
    """fed the program's own integer inputs, every conv/linear/add/mean of the reconstruction sim
    (with the learned weights) gives the program's integers exactly: gemmlowp's double rounding and
    the int32 bias grid included, so the rounding is learned for what ``q.run`` computes."""
    from edgequant import interpreter
    from edgequant.graph_exec import run_node
    from edgequant.reconstruct import brecq

    calib, x = digits
    q = eq.reconstruct.quantize(getattr(eq.models, name)(pretrained=True), "w4a4-brecq", calib, iterations=2,
                                calib_samples=FEW, progress=False)
    g, prog = q.graph, q.program
    act_qp = {k: t.qparams for k, t in prog.tensors.items() if t.qparams is not None}
    act_qp[g.input] = prog.tensors[g.input + ".q"].qparams
    learned = {n.name: n for n in g.nodes if "learned_weight" in n.attrs}
    grids = {k: brecq.WeightGrid(n.attrs["learned_scale"], None, None, n.attrs["learned_bits"]) for k, n in learned.items()}
    sim = brecq._Sim(g, act_qp, brecq.requant_shifts(g, act_qp, grids), grids)
    vals = {}
    interpreter.run(prog, x[:64].numpy(), trace=lambda ins, v: vals.__setitem__(ins.output, v))
    vals[g.input] = vals[g.input + ".q"]

    def real(name):
        qp = act_qp[name]
        return torch.as_tensor((vals[name].astype(np.float32) - int(qp.zero_point)) * float(qp.scale))

    checked = 0
    for n in g.nodes[1:]:
        if n.name not in vals or n.op not in ("conv", "linear", "add", "mean"):
            continue
        w = {}
        if n.name in learned:
            a = learned[n.name].attrs
            w = {"weight": torch.as_tensor(a["learned_weight"].astype(np.float32)
                                           * a["learned_scale"].reshape((-1,) + (1,) * (a["learned_weight"].ndim - 1)))}
        with torch.no_grad():
            y = run_node(n, [real(i) for i in n.inputs], {**(sim.qparams.get(n.name) or sim.params.get(n.name, {})), **w})
            y = sim.fq(n.name, y, 0.0, None)
        qp = act_qp[n.name]
        got = np.round(y.numpy() / float(qp.scale)) + int(qp.zero_point)
        assert np.array_equal(got, vals[n.name]), n.name
        checked += 1
    assert checked >= 4


# -- GPTQ ------------------------------------------------------------------------------------------
def test_gptq_with_diagonal_hessian_is_nearest_rounding_and_compensates_otherwise():
    """With uncorrelated inputs (H diagonal) there is nothing to compensate: GPTQ = nearest. With
    correlated inputs its output error tr(D H D^T) is below nearest rounding's, on the same grid."""
    from edgequant.reconstruct.gptq import gptq

    rng = np.random.default_rng(0)
    w = torch.as_tensor(rng.normal(size=(1, 16, 40)))
    s = w.abs().amax(-1) / 7
    lo, hi = -torch.full((1, 16), 7.0), torch.full((1, 16), 7.0)
    near = torch.clamp(torch.round(w / s.unsqueeze(-1)), -7, 7)
    eye = torch.eye(40, dtype=torch.float64).unsqueeze(0) * 3.0
    for order in (False, True):
        assert torch.equal(gptq(w, eye, s, lo, hi, act_order=order), near)
    x = torch.as_tensor(rng.normal(size=(40, 8)) @ rng.normal(size=(8, 500)) + 0.1 * rng.normal(size=(40, 500)))
    h = (x @ x.T).unsqueeze(0)

    def err(q):
        d = w - q * s.unsqueeze(-1)
        return float(torch.einsum("grk,gkj,grj->", d, h, d))

    for order in (False, True):
        q = gptq(w, h, s, lo, hi, act_order=order, block=16)  # blocks smaller than K: the lazy updates run
        assert torch.equal(q, torch.round(q)) and q.abs().max() <= 7
        assert err(q) < 0.5 * err(near)  # measured ~0.1-0.2x


@pytest.mark.parametrize("name", ["digits_cnn", "mobilenet_v2_digits"])
def test_gptq_patches_are_the_convolution(digits, name):
    """weight (G, R, K) @ patches (G, K, M) is the layer's output for every conv/linear (grouped,
    depthwise, strided, padded): the Hessian is built from the right columns."""
    from edgequant.reconstruct.gptq import _groups, patches

    calib, x = digits
    g = capture_prepared(getattr(eq.models, name)(pretrained=True), x[:2])
    sim = __import__("edgequant.reconstruct.brecq", fromlist=["_Sim"])._Sim(g, {})
    env = sim.run(g.nodes[1:], g.input, x[:3])
    env[g.input] = x[:3]
    kinds = set()
    for n in g.nodes:
        if n.op not in ("conv", "linear"):
            continue
        xin = env[n.inputs[0]]
        cols = patches(n, xin)
        w = torch.as_tensor(n.params["weight"])
        grp = _groups(n)
        y = (w.reshape(grp, w.shape[0] // grp, -1) @ cols).reshape(w.shape[0], len(xin), -1).transpose(0, 1)
        ref = torch.nn.functional.linear(xin, w) if n.op == "linear" else \
            __import__("edgequant.graph_exec", fromlist=["conv_float"]).conv_float(xin, w, None, n.attrs)
        assert torch.allclose(y.reshape(ref.shape), ref, atol=1e-4), n.name
        kinds.add((n.op, grp > 1, tuple(w.shape[2:])))
    assert len(kinds) >= (2 if name == "digits_cnn" else 4)


def test_gptq_lowers_output_error_vs_nearest_on_the_grid(digits):
    """W4A8 GPTQ on mobilenet_v2_digits: the program's integers on the nearest recipe's scales,
    every unit's Hessian error below nearest rounding's, and the logits closer to fp32."""
    calib, x = digits
    m = eq.models.mobilenet_v2_digits(pretrained=True)
    q = eq.reconstruct.quantize(m, "w4a8-gptq", calib, progress=False, calib_samples=256)
    near = eq.quantize(m, _nearest(q.recipe), calib)
    for n in _gemm_nodes(q):
        ins = _instr(q, n.name)
        assert np.array_equal(ins.arrays["weight"], n.attrs["learned_weight"])
        assert np.array_equal(ins.arrays["w_scale"], _instr(near, n.name).arrays["w_scale"])
        assert np.abs(ins.arrays["weight"]).max() <= 7
    units = q.program.meta["reconstruct"]["units"]
    assert all(u["loss_end"] < u["loss_start"] for u in units)
    assert sum(len(u["layer_seconds"]) for u in units) == len(_gemm_nodes(q))
    ref = m(x).detach().numpy()
    mse = lambda qm: float(((np.asarray(qm.run(x.numpy())) - ref) ** 2).mean())  # noqa: E731
    assert mse(q) < 0.8 * mse(near)


def test_gptq_bad_options_are_recipe_errors(digits, cnn):
    calib, _ = digits
    with pytest.raises(RecipeError, match="GPTQ"):
        eq.reconstruct.quantize(cnn, "w4a8-gptq", calib, progress=False, learn_act_scale=True)
    with pytest.raises(RecipeError, match="damp"):
        eq.reconstruct.quantize(cnn, "w4a8-gptq", calib, progress=False, damp=1.5)


def test_progress_lines_when_not_a_terminal_are_rate_limited(capsys, monkeypatch):
    from edgequant.reconstruct import progress as P

    monkeypatch.setattr(P.sys.stderr, "isatty", lambda: False, raising=False)
    p = P.Progress(3, enabled=None)
    for k in range(3):
        p.advance(f"layer {k}", 1.0)
        p.unit_done(f"layer {k}", 0.5)
    p.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "1/3" in lines[0] and "3/3" in lines[1]  # the first, then the last
    P.Progress(3, enabled=False).unit_done("x", 1.0)
    assert capsys.readouterr().err == ""


# -- spatial windows ------------------------------------------------------------------------------
class _PadNet(torch.nn.Module):
    """TF-style asymmetric explicit padding, a stride-2 conv, a depthwise conv and a residual add
    (the shapes of EfficientNet-Lite's blocks) on a 17x17 map."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.expand = torch.nn.Conv2d(8, 16, 1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = torch.relu(self.stem(torch.nn.functional.pad(x, (0, 1, 0, 1))))
        relu6 = torch.nn.functional.relu6
        return x + self.project(relu6(self.dw(relu6(self.expand(x)))))


def _window_graphs():
    out = [(capture_prepared(_PadNet().eval(), torch.zeros(2, 3, 17, 17)), (3, 17, 17))]
    for name in ("resnet_digits", "mobilenet_v2_digits"):
        out.append((capture_prepared(getattr(eq.models, name)(pretrained=True), torch.zeros(2, 1, 8, 8)), (1, 8, 8)))
    return out


def test_window_output_is_the_full_outputs_region():
    """Every unit run on a window (the entry cropped with the receptive-field halo, zeros only
    where the map's own padding is) gives exactly the full run's region, fake quantization included."""
    from edgequant.qmath import QParams
    from edgequant.reconstruct import brecq, window

    rng = np.random.default_rng(0)
    checked = 0
    for g, shape in _window_graphs():
        x = torch.randn((4,) + shape)
        env0 = brecq._Sim(g, {}).run(g.nodes[1:], g.input, x)  # float reference of every tensor
        act_qp = {n.name: QParams(np.asarray(float(env0[n.name].abs().max()) / 127 + 1e-4, np.float32),
                                  np.asarray(0, np.int32)) for n in g.nodes[1:]}  # fake quantization too
        sim = brecq._Sim(g, act_qp)
        for u in find_units(g):
            if not window.windowable(list(u.nodes), sim.shapes[u.entry]):
                continue
            full = sim.run(u.nodes, u.entry, env0[u.entry], quant=True)[u.output]
            h, w = full.shape[2:]
            for _ in range(6):
                win = window.sample_window(list(u.nodes), u.entry, sim.shapes, max(1, (h * w) // 3), rng)
                assert win is not None
                b = win.boxes[u.entry]
                got = sim.run(u.nodes, u.entry, env0[u.entry][:, :, b[0]:b[1], b[2]:b[3]], quant=True, win=win)[u.output]
                r0, r1, c0, c1 = win.out
                torch.testing.assert_close(got, full[:, :, r0:r1, c0:c1], rtol=0, atol=1e-5)
                checked += 1
    assert checked >= 30


def test_window_loss_is_unbiased_over_window_places():
    """Averaged over every place of the window's corner, the windowed loss is the full-map loss."""
    from edgequant.reconstruct import brecq, window

    y, t = torch.randn(3, 4, 9, 7), torch.randn(3, 4, 9, 7)
    full = float(brecq._rec_loss(y, t))
    h, w = 9, 7
    wh, ww = window.window_shape(h, w, 20)
    assert wh * ww <= 20 and (wh, ww) != (h, w)
    scale = window.crop_scale(h, w, wh, ww)
    losses = []
    for r in range(-(wh - 1), h):
        for c in range(-(ww - 1), w):
            out = (max(r, 0), min(r + wh, h), max(c, 0), min(c + ww, w))
            win = window.Window(out, {}, scale)
            sl = (slice(None), slice(None), slice(out[0], out[1]), slice(out[2], out[3]))
            losses.append(float(brecq._rec_loss(y[sl], t[sl], win, tuple(y.shape))))
    assert np.mean(losses) == pytest.approx(full, rel=1e-5)
    # the map no larger than the window: no window, the exact full loss
    assert window.window_shape(8, 8, 64) == (8, 8) and window.crop_scale(8, 8, 8, 8) == 1.0


def test_store_reads_a_window_of_rows():
    space = StoreSpace()
    st = TensorStore(space, (5, 2, 6, 6), np.float16)
    data = torch.randn(5, 2, 6, 6)
    st.append(data)
    idx = np.array([4, 0, 2])
    assert torch.equal(st.get(idx, (1, 4, 2, 6)), st.get(idx)[:, :, 1:4, 2:6])
    st.release()


@pytest.mark.parametrize("recipe,bits", [("w4a8-adaround", (2, 8)), ("w2a4-brecq", (2, 4))])
def test_windowed_reconstruction_still_beats_nearest(digits, recipe, bits):
    """With a 3x3 window on 8x8 digits maps (every step sees 9 of 64 positions), the learned
    rounding still beats nearest rounding on the same grid; the report names the windows."""
    calib, x = digits
    model = eq.models.mobilenet_v2_digits(pretrained=True)
    y = model(x).argmax(1).numpy()
    method = recipe.split("-")[1]
    r = make_recipe(*bits, method)
    near = eq.quantize(model, _nearest(r), calib)
    q = eq.reconstruct.quantize(model, r, calib, iterations=200 if method == "adaround" else 300, progress=False,
                                window=9)
    units = q.program.meta["reconstruct"]["units"]
    assert any(u["windows"] for u in units) and all(tuple(v) == (3, 3) for u in units for v in u["windows"].values())
    agree = lambda m: (np.asarray(m.run(x.numpy())).argmax(1) == y).mean()  # noqa: E731
    assert agree(q) > agree(near) + 0.01


def test_cpu_budget_cuts_costly_steps_and_is_reported(digits, cnn):
    """A CPU budget that every layer exceeds cuts each to the floor (50 steps) and the report says so;
    without one (or with the default, on a digits-size net) every layer gets ``iterations``."""
    from edgequant.reconstruct import DEFAULT_CPU_BUDGET, brecq

    calib, _ = digits
    q = eq.reconstruct.quantize(cnn, "w4a8-adaround", calib, iterations=80, progress=False, calib_samples=FEW,
                                cpu_budget=1e-9)
    units = q.program.meta["reconstruct"]["units"]
    assert all(v == brecq.MIN_STEPS for u in units for v in u["layer_iterations"].values())
    assert sum(u["iterations"] for u in units) == brecq.MIN_STEPS * len(_gemm_nodes(q))
    q = eq.reconstruct.quantize(cnn, "w4a4-brecq", calib, iterations=60, progress=False, calib_samples=FEW)
    assert q.recipe.option("cpu_budget") == DEFAULT_CPU_BUDGET["brecq"]
    assert all(u["iterations"] == 60 for u in q.program.meta["reconstruct"]["units"])


def test_streamed_unit_pass_keeps_only_the_output_and_equals_the_full_pass(digits, cnn):
    """``_Sim.run(keep=...)`` (the streamed boundary passes) drops every other tensor after its last
    use and gives the same output; ``stream_rows`` shrinks the batch as the unit's maps grow."""
    from edgequant.reconstruct import brecq

    calib, x = digits
    g = capture_prepared(cnn, x[:1])
    sim = brecq._Sim(g, {}, None, None)
    for unit in find_units(g):
        if len(unit.nodes) < 2:
            continue
        xin = sim.run(g.nodes[1:], g.input, x[:8])[unit.entry] if unit.entry != g.input else x[:8]
        full = sim.run(unit.nodes, unit.entry, xin)
        kept = sim.run(unit.nodes, unit.entry, xin, keep=unit.output)
        assert set(kept) <= {unit.entry, unit.output} and unit.output in kept
        assert torch.equal(kept[unit.output], full[unit.output])
    big = {"a": (1, 96, 120, 120), "b": (1, 8, 8, 8)}
    sim.shapes.update(big)
    assert sim.stream_rows(["a"]) < sim.stream_rows(["b"]) <= 128
    assert sim.stream_rows(["a"]) * 96 * 120 * 120 * 4 * brecq.STREAM_LIVE <= brecq.STREAM_BYTES


def test_heap_bound_applies_on_glibc_and_opts_out(monkeypatch):
    import platform

    from edgequant import heap

    monkeypatch.setenv("EDGEQUANT_MALLOC", "default")
    assert heap.bound_heap() is False and heap.applied() is False
    monkeypatch.delenv("EDGEQUANT_MALLOC")
    glibc = platform.libc_ver()[0] == "glibc"
    with heap.bounded_heap():
        assert heap.applied() is glibc  # musl/macOS: no such knob, nothing done
        x = np.ones(1 << 22)  # a 32 MB block: mapped, and allocation still works inside
    assert float(x.sum()) == float(1 << 22)


def test_heap_trim_returns_fragmented_step_buffers():
    """Buffers of varying size freed inside ``reusing_heap`` stay in the heap until ``trim`` (BRECQ's
    clipped windows did this: 1.1 -> 2.7 GB on Lite1); after it the process's anonymous memory drops.
    In a fresh process, so that the heap's history (other tests) does not decide the figures."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    script = """
import numpy as np
from edgequant import heap

def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) / 1024

rng = np.random.default_rng(0)
with heap.bounded_heap(), heap.reusing_heap():
    keep, big = [], []
    for _ in range(120):  # 1-8 MB step buffers, a 16 KB survivor after each: the heap cannot shrink from the top
        big.append(np.ones(int(rng.integers(1 << 17, 1 << 20))))
        keep.append(np.ones(2048))
    del big
    before = anon_mb()
    heap.trim()
    print(before, anon_mb())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = map(float, out.stdout.split()[-2:])
    assert before - after > 100, (before, after)


def test_cpu_budget_reestimates_steps_that_get_costlier():
    """A 5-step probe can under-estimate a step (Lite1's last chain ran 2.4x over its budget): the step
    count is re-estimated as steps run, so a unit whose steps turn costly still ends near its budget."""
    import time as _time

    from edgequant.reconstruct.adaround import AdaRoundWeight
    from edgequant.reconstruct.brecq import MIN_STEPS, ReconConfig, _Trainer
    from edgequant.reconstruct.progress import Progress

    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    ada = {"l": AdaRoundWeight(w, np.full(4, 0.1, np.float32), np.full(4, -8.0), np.full(4, 7.0))}
    cfg = ReconConfig(method="adaround", iterations=2000, cpu_budget=0.4)
    trainer = _Trainer(cfg, None, Progress(2000, enabled=False))
    calls = {"n": 0}

    def loss_fn(weights):
        calls["n"] += 1
        if calls["n"] > 5:  # after the probe: each step burns ~3 ms of CPU
            t = _time.process_time()
            while _time.process_time() - t < 0.003:
                pass
        return (weights["l"] ** 2).sum()

    trainer.fit("l", ada, loss_fn)
    steps = trainer.steps_done[-1]
    assert MIN_STEPS <= steps < 400, steps  # 2000 without the re-estimate (the probe saw free steps)
