"""Group-wise 4-bit weight scales (option ``weight_group``, ``lowbit/groups.py``; issue 16).

On the hand-built HF-style encoder of test_hf_inputs: the integer GEMM multiplies the codes by their
group's multiplier exactly, every instruction within 1 LSB of its float twin, GPTQ on the group grid
beats nearest rounding on that grid, the artifact round-trips bit-identically with the multipliers
counted in ``size_bytes``, and the exporters refuse by layer name.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import edgequant as eq
from edgequant.errors import ExportError, RecipeError
from edgequant.lowbit import groups
from edgequant.reconstruct import with_options

from test_act16_all import enc  # noqa: F401  (the encoder, calibration and evaluation batches, fp32 output)
from test_hf_inputs import cosine

G = 8  # the encoder's linears are 16 wide: two groups per row


@pytest.fixture(scope="module")
def qg(enc):
    return eq.quantize(enc[0], with_options("w4a16-g128-gptq", weight_group=G), enc[1])


def _linears(q):
    return [ins for ins in q.program.instrs if ins.op == "linear"]


def test_grouped_linears_carry_4_bit_codes_and_multipliers(qg):
    lin = _linears(qg)
    assert len(lin) == 4
    for ins in lin:
        w, m = ins.arrays["weight"], ins.arrays[groups.ARRAY]
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 7 and ins.attrs["weight_bits"] == 4
        assert m.dtype == np.uint8 and m.shape == (w.shape[0], 2) and m.min() >= 1 and ins.attrs[groups.ATTR] == G
    assert any(len(np.unique(ins.arrays[groups.ARRAY])) > 1 for ins in lin)  # really one step per group


def test_integer_gemm_multiplies_codes_by_their_group_multiplier(qg, enc):
    """The kernel's accumulator against int64 arithmetic written out here (codes x repeated multipliers)."""
    from edgequant.interpreter import run
    from edgequant.kernels.conv import int_accumulate

    p, env = qg.program, {}
    run(p, {k: v.numpy() for k, v in enc[2].items()}, trace=lambda ins, v: env.__setitem__(ins.output, v))
    for ins in _linears(qg):
        x = env[ins.inputs[0]].reshape(-1, ins.arrays["weight"].shape[1])
        zx = int(p.tensors[ins.inputs[0]].qparams.zero_point)
        w = ins.arrays["weight"].astype(np.int64) * np.repeat(ins.arrays[groups.ARRAY].astype(np.int64), G, axis=1)
        want = (x.astype(np.int64) - zx) @ w.T
        np.testing.assert_array_equal(np.asarray(int_accumulate(ins, x, zx)).astype(np.int64), want)


def test_run_within_one_lsb_of_simulate(qg, enc):
    from float_twins import EXACT_OPS, twin_errors

    for ins, d in twin_errors(qg, {k: v.numpy() for k, v in enc[2].items()}):
        assert d <= (0 if ins.op in EXACT_OPS else 1), (ins.op, ins.output, d)
    assert float(cosine(qg.run(enc[2]), enc[3]).min()) > 0.99


def test_nearest_rounding_on_groups_is_closer_to_the_weights_than_per_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32) * rng.uniform(0.05, 3.0, (1, 64)).astype(np.float32)
    q, s, m = groups.quantize_groups(w, 4, "minmax", 16)
    err_g = np.abs(w - q * groups.column_scale(s, m, 64, 16)).mean()
    qc = np.clip(np.rint(w / (np.abs(w).max(1, keepdims=True) / 7)), -7, 7)
    err_c = np.abs(w - qc * np.abs(w).max(1, keepdims=True) / 7).mean()
    assert m.shape == (16, 4) and err_g < 0.8 * err_c, (err_g, err_c)


def test_gptq_on_the_group_grid_beats_nearest_rounding_on_it():
    """A layer's output error ||(W - Q*S) X||^2 on correlated inputs: GPTQ with per-weight steps vs
    nearest rounding onto the same steps."""
    from edgequant.reconstruct.gptq import gptq

    g = torch.Generator().manual_seed(0)
    k, o = 64, 24
    x = torch.randn(512, k, generator=g, dtype=torch.float64) @ torch.randn(k, k, generator=g, dtype=torch.float64)
    w = torch.randn(o, k, generator=g, dtype=torch.float64)
    q0, s, m = groups.quantize_groups(w.numpy(), 4, "minmax", 16)
    steps = torch.as_tensor(groups.column_scale(s, m, k, 16))
    h = (x.T @ x).unsqueeze(0)
    hi = torch.full((1, o), 7.0)
    q = gptq(w.unsqueeze(0), h, steps.unsqueeze(0), -hi, hi, act_order=True)[0]
    assert q.abs().max() <= 7 and torch.equal(q, q.round())
    out_err = lambda qq: float(((w - qq * steps) @ x.T).pow(2).sum())  # noqa: E731
    e_gptq, e_near = out_err(q), out_err(torch.as_tensor(q0, dtype=torch.float64))
    assert e_gptq < 0.7 * e_near, (e_gptq, e_near)


@pytest.fixture(scope="module")
def layer_q():
    """A single-input BERT layer (the artifact stores one float32 input) with grouped GPTQ weights."""
    from test_act16 import _bert_layer

    x = torch.randn(40, 8, 32, generator=torch.Generator().manual_seed(3))
    return eq.quantize(_bert_layer(), with_options("w4a16-g128-gptq", weight_group=G), x[:32]), x[32:].numpy()


def test_artifact_round_trip_is_bit_identical_and_size_counts_multipliers(layer_q, tmp_path):
    from edgequant.quantized import program_size_bytes

    q, x = layer_q
    grouped = [ins for ins in q.program.instrs if groups.ARRAY in ins.arrays]
    assert len(grouped) >= 4
    q.save(str(tmp_path / "g"))
    q2 = eq.load(str(tmp_path / "g"))
    for a, b in zip(q.program.instrs, q2.program.instrs):
        assert a.arrays.keys() == b.arrays.keys() and a.attrs.get(groups.ATTR) == b.attrs.get(groups.ATTR)
        for key in a.arrays:
            assert a.arrays[key].dtype == b.arrays[key].dtype
            np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
    for mode in ("gemmlowp", "onnxruntime"):
        np.testing.assert_array_equal(np.asarray(q.run(x, rounding=mode)), np.asarray(q2.run(x, rounding=mode)))
    mults = sum(ins.arrays[groups.ARRAY].size for ins in grouped)
    for ins in q2.program.instrs:
        ins.arrays = {k: v for k, v in ins.arrays.items() if k != groups.ARRAY}
    assert q.size_bytes - program_size_bytes(q2.program) == mults > 0


def test_corrupt_multipliers_are_refused_at_load(layer_q, tmp_path):
    from edgequant.errors import ArtifactError
    from test_artifact import edit_program, reseal

    def regroup(doc):  # the stored multipliers no longer tile the row
        next(ins for ins in doc["instrs"] if groups.ATTR in ins.get("attrs", {}))["attrs"][groups.ATTR] = 3

    layer_q[0].save(str(tmp_path / "g"))
    edit_program(tmp_path / "g", regroup)
    reseal(tmp_path / "g")
    with pytest.raises(ArtifactError, match=groups.ARRAY):
        eq.load(str(tmp_path / "g"))


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval(), torch.randn(64, 32)


def test_exporters_refuse_group_weights_by_layer():
    """An MLP both emitters take at per-channel W4A8 is refused, by layer, once its weights are grouped."""
    from edgequant.export.onnx import to_onnx
    from edgequant.export.tflite import to_tflite

    mlp, x = _mlp()
    plain, grouped = (eq.quantize(mlp, with_options("w4a8", weight_group=g), x) for g in (None, G))
    for fn, fmt in ((to_onnx, "ONNX"), (to_tflite, "TFLite")):
        fn(plain)
        want = f"cannot be exported to {fmt}: layer.*'linear'.*group-wise weight scales.*q.run"
        with pytest.raises(ExportError, match=want):
            fn(grouped)


def test_weight_group_needs_a_method_with_group_scales():
    mlp, x = _mlp()
    for name in ("w4a4-aciq", "w4a8-adaround"):
        with pytest.raises(RecipeError, match="weight_group"):
            eq.quantize(mlp, with_options(name, weight_group=G), x)
    with pytest.raises(RecipeError, match="weight_group=-1"):
        eq.quantize(mlp, with_options("w4a8", weight_group=-1), x)


def test_sequential_gptq_rounds_later_stages_on_the_rounded_layers_before(enc, qg):
    """Sequential mode: Q, K, V share the first stage (same Hessians as the one-pass run, so the same
    integers); the attention output is solved on inputs produced by the rounded Q/K/V (other integers)."""
    from edgequant.reconstruct.gptq_graph import stages

    model, calib, ev, ref = enc
    qs = eq.quantize(model, with_options("w4a16-g128-gptq", weight_group=G, sequential=True), calib)
    assert qs.program.meta["reconstruct"]["units"][0]["unit"] == "graph (sequential)"
    one = {ins.node: ins.arrays["weight"] for ins in _linears(qg)}
    seq = {ins.node: ins.arrays["weight"] for ins in _linears(qs)}
    assert len(one) == 4 and one.keys() == seq.keys()
    cut = stages(qs.graph, [n for n in qs.graph.nodes if n.name in one])
    assert [len(s) for s in cut] == [3, 1], [[n.name for n in s] for s in cut]
    first, last = list(one)[:3], list(one)[3]
    assert all(np.array_equal(one[k], seq[k]) for k in first)
    assert not np.array_equal(one[last], seq[last])
    assert float(cosine(qs.run(ev), ref).min()) > 0.99

