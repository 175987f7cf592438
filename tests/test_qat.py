"""Quantization-aware training: fake-quant maths, the integer twin, prepare/convert agreement,
BatchNorm folding during training, the finetune loop and its errors. Small nets, few steps."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant import qmath
from edgequant.errors import CalibrationError, RecipeError
from edgequant.ir import Node
from edgequant.qat import ActFakeQuant, QATModel, WeightFakeQuant, integer_twin as twin
from edgequant.qat.convert import learned_weights
from edgequant.qat.fake_quant import sign_ste

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def data():
    """(calib loader, test inputs as NumPy, test labels as NumPy)."""
    calib, test = eq.data.digits()
    return calib, torch.cat([x for x, _ in test]).numpy(), torch.cat([y for _, y in test]).numpy()


def _train_steps(qm: nn.Module, steps: int, lr: float = 1e-3, seed: int = 0) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(qm.parameters(), lr=lr)
    dev = next(qm.parameters()).device
    qm.train()
    it = iter(eq.data.digits_train(batch_size=64, seed=seed))
    for _ in range(steps):
        x, y = next(it)
        opt.zero_grad()
        nn.functional.cross_entropy(qm(x.to(dev)), y.to(dev)).backward()
        opt.step()
    qm.eval()


# -- the integer twin is bit-exact with the NumPy spec ------------------------------------------------
def test_twin_requantize_matches_qmath_bit_exactly():
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.uniform(1e-4, 0.99, 40), rng.uniform(1.0, 40.0, 8), [0.5, 0.25, 1.0]])
    acc = rng.integers(-(2**20), 2**20, size=(64, real.size)).astype(np.int64)
    acc[:4] = [[0], [1], [-1], [3]]  # tiny accumulators: where gemmlowp's double rounding shows
    m0, sh = qmath.quantize_multiplier(real)
    tm0, tsh = twin.quantize_multiplier(torch.from_numpy(real))
    assert np.array_equal(m0, tm0.numpy()) and np.array_equal(sh, tsh.numpy())
    for rounding in ("gemmlowp", "onnxruntime"):
        want = qmath.requantize(acc, m0=m0, shift=sh, real_multiplier=real.astype(np.float32), zero_point=-3,
                                qmin=-8, qmax=7, rounding=rounding)
        got = twin.requantize(torch.from_numpy(acc), torch.from_numpy(real), torch.from_numpy(real.astype(np.float32)),
                              -3, -8, 7, rounding)
        assert np.array_equal(want, got.numpy()), rounding


# -- fake-quant modules ---------------------------------------------------------------------------------
def test_lsq_weight_init_grad_scale_and_grid():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    fq = WeightFakeQuant(w, bits=4, method="lsq")
    qp = 7  # narrow 4-bit: [-7, 7]
    assert torch.allclose(fq.scale, 2 * w.abs().reshape(6, -1).mean(1) / math.sqrt(qp))
    out = fq(w)
    ints = out / fq.scale.reshape(-1, 1, 1, 1)
    assert torch.allclose(ints, ints.round(), atol=1e-4) and ints.abs().max() <= qp
    # gradient of the step carries LSQ's scale 1/sqrt(N * Q_P), N = weights per channel
    out.sum().backward()
    s = fq.scale.detach().reshape(-1, 1, 1, 1)
    v = w / s
    inside = (v.round() >= -qp) & (v.round() <= qp)
    dstep = torch.where(inside, v.round() - v, torch.clamp(v.round(), -qp, qp)).reshape(6, -1).sum(1)
    assert torch.allclose(fq.scale.grad, dstep / math.sqrt(36 * qp), atol=1e-5)


def test_sign_ste_and_xnor_weights():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1, -1, 1, 1, 1]  # never 0
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 0]  # clipped identity
    w = torch.randn(3, 8)
    fq = WeightFakeQuant(w, bits=1)
    out = fq(w)
    alpha = w.abs().mean(1, keepdim=True)
    assert fq.method == "xnor" and torch.allclose(out, alpha * torch.where(w >= 0, 1.0, -1.0))


def test_lsq_activation_step_gradient_scale():
    """Activation step: LSQ gradient sum(dy/ds) scaled by 1/sqrt(N * Q_P), N = features per
    sample, Q_P = qmax - zero point (the positive levels of an asymmetric grid)."""
    qp = qmath.compute_qparams(-1.0, 3.0, bits=4)
    fq = ActFakeQuant(qp, "lsq")
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4) * 2
    fq(x).sum().backward()
    s, z = float(fq.scale.detach()), float(qp.zero_point)
    v = x / s
    q = torch.clamp(torch.round(v) + z, -8, 7)
    inside = (torch.round(v) + z >= -8) & (torch.round(v) + z <= 7)
    dstep = torch.where(inside, torch.round(v) - v, q - z).sum()
    assert float(fq.scale.grad) == pytest.approx(float(dstep) / math.sqrt(12 * (7 - z)), rel=1e-4)


def test_binary_activation_levels_threshold_and_ste():
    """1-bit activations take the program's levels: {-s, s} (zp 0, sign) or {0, 2s} (zp -1,
    high iff x >= s, the binarize midpoint); gradient only between the levels (clipped identity)."""
    x = torch.tensor([[-3.0, -0.5, 0.0, 0.4, 0.5, 0.9, 1.2, 5.0]], requires_grad=True)  # one sample, 8 features
    signed = ActFakeQuant(qmath.QParams(np.float32(1.0), np.int32(0), 1, True, False, None))
    assert signed.method == "sign"
    y = signed(x)
    assert y.tolist() == [[-1, -1, 1, 1, 1, 1, 1, 1]]
    y.sum().backward()
    assert x.grad.tolist() == [[0, 1, 1, 1, 1, 1, 0, 0]]
    assert float(signed.scale.grad) == pytest.approx(4 / math.sqrt(8))  # sum of levels (+-1), LSQ-scaled
    x.grad = None
    relu = ActFakeQuant(qmath.QParams(np.float32(0.5), np.int32(-1), 1, True, False, None))
    y = relu(x)
    assert y.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]  # {0, 2s}, threshold s = 0.5
    y.sum().backward()
    assert x.grad.tolist() == [[0, 0, 1, 1, 1, 1, 0, 0]]  # inside [0, 2s]
    with pytest.raises(RecipeError, match="zero point"):
        ActFakeQuant(qmath.QParams(np.float32(1.0), np.int32(-3), 1, True, False, None))


def test_pact_clip_gets_gradient_of_clipped_values():
    qp = qmath.compute_qparams(0.0, 4.0, bits=4)
    fq = ActFakeQuant(qp, "pact")
    x = torch.tensor([[0.5, 1.0, 6.0, 9.0]])
    fq(x).sum().backward()
    assert float(fq.hi.grad) == 2.0  # two values above the clip
    assert float(fq.qparams().scale) == pytest.approx(float(fq.hi.detach()) / 15)


def test_ema_ranges_track_batches_in_training_only():
    fq = ActFakeQuant(qmath.compute_qparams(0.0, 1.0, bits=8), "ema", momentum=0.5)
    fq.train()
    fq(torch.full((2, 3), 3.0))
    assert float(fq.hi) == pytest.approx(2.0)
    fq.eval()
    fq(torch.full((2, 3), 100.0))
    assert float(fq.hi) == pytest.approx(2.0)


# -- prepare / convert -----------------------------------------------------------------------------
def test_prepare_returns_plain_module_and_leaves_model_alone(data):
    calib, xs, _ = data
    m = eq.models.digits_cnn(pretrained=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    qm = eq.qat.prepare(m, "w4a4-qat", calib)
    assert isinstance(qm, nn.Module) and qm.training
    names = {n for n, _ in qm.named_parameters()}
    assert any(n.endswith("bn_weight") for n in names) and any(n.endswith("wfq.scale") for n in names)
    _train_steps(qm, 2)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_convert_minmax_untrained_is_the_ptq_program(data):
    """Untrained, with the whitepaper's min/max weights, convert gives eq.quantize's program
    (the PTQ recipe without its post-training bias correction, which QAT learns instead)."""
    import dataclasses

    calib, xs, _ = data
    m = eq.models.digits_cnn(pretrained=True)
    q_ptq = eq.quantize(m, dataclasses.replace(eq.get_recipe("w8a8-pc"), options=()), calib)
    q_qat = eq.qat.convert(eq.qat.prepare(m, "w8a8-pc", calib, weight_range="minmax").eval())
    assert isinstance(q_qat, eq.QuantizedModel)
    a, b = q_ptq.run(xs[:128], return_int=True), q_qat.run(xs[:128], return_int=True)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1 and (a == b).mean() > 0.99


@pytest.mark.parametrize("model,recipe,steps,roundings", [
    ("digits_cnn", "w2a2-qat", 3, ("gemmlowp", "onnxruntime")),
    ("digits_cnn", "w1a1-xnor-qat", 3, ("gemmlowp",)),
    ("resnet_digits", "w4a4-qat", 2, ("gemmlowp",)),
    ("resnet_digits", "w1a1-xnor-qat", 2, ("onnxruntime",)),  # binary add/mean outputs, residuals
])
def test_trained_module_and_program_agree_exactly(data, model, recipe, steps, roundings):
    calib, xs, ys = data
    m = getattr(eq.models, model)(pretrained=True)
    for rounding in roundings:
        qm = eq.qat.prepare(m, recipe, calib, rounding=rounding)
        _train_steps(qm, steps)
        q = eq.qat.convert(qm)
        with torch.no_grad():
            want = qm(torch.from_numpy(xs[:160])).numpy()
        got = q.run(xs[:160], rounding=rounding)
        assert np.allclose(want, got, atol=1e-4 * np.abs(want).max()), rounding
        assert (want.argmax(1) == got.argmax(1)).mean() == 1.0


def test_w1a1_xnor_qat_is_an_xnor_popcount_program_with_8bit_edges(data):
    """Binary weights and activations inside, first/last layers and the network edges at 8 bits,
    the binary GEMMs lowered to the XNOR-popcount kernels; the module trains on those levels."""
    calib, xs, _ = data
    qm = eq.qat.prepare(eq.models.digits_cnn(pretrained=True), "w1a1-xnor-qat", calib)
    bits = {name: g.wfq.bits for name, g in qm.gemms.items()}
    names = list(bits)
    assert bits[names[0]] == 8 and bits[names[-1]] == 8 and all(bits[n] == 1 for n in names[1:-1])
    acts = [(fq.bits, fq.fixed_zp) for fq in qm.acts.values()]
    assert acts[0][0] == 8 and acts[-1][0] == 8  # network input and logits
    assert (1, -1.0) in acts  # post-ReLU binary tensors: levels {0, 2s}
    ops = [i.op for i in eq.qat.convert(qm.eval()).program.instrs]
    assert ops.count("conv_xnor") == 2 and ops.count("linear_xnor") == 1 and ops.count("binarize") == 4
    assert ops[1] == "conv" and ops[-2] == "linear"


def test_plain_fake_quant_matches_sub8bit_program_in_both_modes(data):
    """2-bit outputs are requantized with single rounding (lower records it; gemmlowp's double
    rounding used to move a few percent of them), so plain fake-quant is the program's value."""
    calib, xs, _ = data
    m = eq.models.digits_cnn(pretrained=True)
    qm = eq.qat.prepare(m, "w2a2-qat", calib, rounding=None).eval()
    q = eq.qat.convert(qm)
    with torch.no_grad():
        plain = qm(torch.from_numpy(xs[:256])).numpy()
    assert np.allclose(plain, q.run(xs[:256], rounding="onnxruntime"), atol=1e-4 * np.abs(plain).max())
    assert all(i.attrs.get("rounding") == "single" for i in q.program.instrs if i.op in ("conv", "linear"))
    assert np.allclose(plain, q.run(xs[:256], rounding="gemmlowp"), atol=1e-4 * np.abs(plain).max())


class _OddOps(nn.Module):
    """cat, avg-pool, unfused ReLU6, explicit pad, global mean: the requantizing ops besides add."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 1)
        self.c = nn.Conv2d(8, 6, 3)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = nn.functional.avg_pool2d(nn.functional.relu6(y), 2)
        y = self.c(nn.functional.pad(y, (1, 1, 1, 1)))
        return self.fc(y.mean((2, 3)))


def test_cat_avgpool_pad_clamp_mean_agree(data):
    calib, xs, _ = data
    torch.manual_seed(0)
    m = _OddOps().eval()
    for rounding in ("gemmlowp", "onnxruntime"):
        qm = eq.qat.prepare(m, "w4a4-qat", calib, rounding=rounding)
        _train_steps(qm, 2)
        q = eq.qat.convert(qm)
        with torch.no_grad():
            want = qm(torch.from_numpy(xs[:128])).numpy()
        assert np.allclose(want, q.run(xs[:128], rounding=rounding), atol=1e-4 * np.abs(want).max()), rounding


# -- BatchNorm during training ------------------------------------------------------------------------
def test_batchnorm_live_then_frozen_converts_without_jump(data):
    calib, xs, _ = data
    m = eq.models.digits_cnn(pretrained=True)
    qm = eq.qat.prepare(m, "w4a4-qat", calib, freeze_bn_step=3)
    g = next(iter(qm.gemms.values()))
    mean0 = g.running_mean.clone()
    _train_steps(qm, 3)
    assert not torch.equal(mean0, g.running_mean)  # batch statistics were used and tracked
    assert g.bn_frozen
    mean1 = g.running_mean.clone()
    _train_steps(qm, 2, seed=1)
    assert torch.equal(mean1, g.running_mean)  # frozen: running statistics only
    with torch.no_grad():
        want = qm(torch.from_numpy(xs[:128])).numpy()
    assert np.allclose(want, eq.qat.convert(qm).run(xs[:128]), atol=1e-4 * np.abs(want).max())


# -- finetune, errors, devices ---------------------------------------------------------------------
def test_finetune_improves_w2a2_over_its_start_and_reports_progress(data):
    calib, xs, ys = data
    m = eq.models.digits_cnn(pretrained=True)
    start = eq.qat.convert(eq.qat.prepare(m, "w2a2-qat", calib).eval())
    acc0 = (start.run(xs).argmax(1) == ys).mean()
    small = torch.utils.data.DataLoader(torch.utils.data.Subset(eq.data.digits_train().dataset, range(512)),
                                        batch_size=64, shuffle=True)
    lines: list[str] = []
    q = eq.qat.finetune(m, "w2a2-qat", small, calib, epochs=2, lr=2e-3, progress=lines.append)
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"]
    acc = (q.run(xs).argmax(1) == ys).mean()
    assert isinstance(q, eq.QuantizedModel) and acc > acc0 + 0.05, (acc0, acc)


def test_finetune_defaults_come_from_the_recipe(data):
    calib, _, _ = data
    r = eq.get_recipe("w4a4-qat")
    r = dataclasses.replace(r, name="w4a4-qat-2ep", options=r.options + (("qat_epochs", 2), ("qat_lr", 5e-4)))
    tiny = torch.utils.data.DataLoader(torch.utils.data.Subset(eq.data.digits_train().dataset, range(32)), batch_size=32)
    lines: list[str] = []
    q = eq.qat.finetune(eq.models.digits_cnn(pretrained=True), r, tiny, calib, progress=lines.append)
    assert len(lines) == 2 and isinstance(q, eq.QuantizedModel)
    for name in ("w4a4-qat", "w2a2-qat", "w1a1-xnor-qat"):
        assert eq.get_recipe(name).option("qat_epochs") >= 1 and eq.get_recipe(name).option("qat_lr") > 0


def test_errors_are_typed_and_actionable(data):
    calib, _, _ = data
    m = eq.models.digits_cnn(pretrained=True)
    with pytest.raises(RecipeError, match="static"):
        eq.qat.prepare(m, "fp32", calib)
    with pytest.raises(CalibrationError, match="calib"):
        eq.qat.prepare(m, "w4a4-qat", None)
    with pytest.raises(RecipeError, match="act_range"):
        eq.qat.prepare(m, "w4a4-qat", calib, act_range="kl")
    with pytest.raises(RecipeError, match="unknown QAT settings"):
        eq.qat.prepare(m, "w4a4-qat", calib, lerning_rate=1)
    with pytest.raises(RecipeError, match="prepare"):
        eq.qat.convert(m)
    node = Node("conv", "conv", params={"weight": np.ones((2, 1, 1, 1), np.float32)}, module="features.0")
    with pytest.raises(RecipeError, match="edgequant.qat.convert"):
        learned_weights(node, eq.get_recipe("w4a4-qat"), 4)


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_the_models_device(data, device):
    calib, xs, _ = data
    m = eq.models.digits_cnn(pretrained=True).to(device)
    qm = eq.qat.prepare(m, "w4a4-qat", calib)
    assert isinstance(qm, QATModel) and all(p.device.type == device for p in qm.parameters())
    _train_steps(qm, 1)
    q = eq.qat.convert(qm)
    with torch.no_grad():
        want = qm(torch.from_numpy(xs[:64]).to(device)).cpu().numpy()
    assert (want.argmax(1) == q.run(xs[:64]).argmax(1)).mean() == 1.0


def test_forward_and_backward_follow_the_models_device_meta(data):
    """On the ``meta`` device any tensor created on the CPU inside forward/backward fails, as it
    would on CUDA: the fake-quant path (BN live, every range method) keeps to the model's device.
    (The exact-integer path reads the grid as Python numbers and is checked on CPU/CUDA above.)"""
    calib, _, _ = data
    m = eq.models.digits_cnn(pretrained=True)
    for recipe, act_range in (("w2a2-qat", "pact"), ("w4a4-qat", "ema"), ("w1a1-xnor-qat", "lsq")):
        qm = eq.qat.prepare(m, recipe, calib, rounding=None, act_range=act_range, freeze_bn_step=None).to("meta")
        y = qm(torch.randn(4, 1, 8, 8, device="meta"))
        assert y.device.type == "meta" and y.shape == (4, 10)
        y.sum().backward()
        assert all(p.grad is None or p.grad.device.type == "meta" for p in qm.parameters())
    acc = torch.zeros(2, 3, dtype=torch.long, device="meta")
    real = torch.full((1, 3), 0.3, dtype=torch.float64, device="meta")
    assert twin.requantize(acc, real, real.float(), 0, -8, 7, "gemmlowp").device.type == "meta"
