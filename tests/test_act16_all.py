"""16-bit attention (recipe ``w8a16``: act16="all"), the transformer default, GPTQ W4 on transformers.

On the hand-built HF-style encoder of test_hf_inputs (embeddings, padding mask, masked softmax,
masked mean pooling): every instruction of the int16 attention path within 1 LSB of its float twin,
the int16 kernels against exact arithmetic, the default recipe chosen from the graph, and GPTQ's
4-bit weights on a graph the unit pipeline cannot cut (issue 16).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import edgequant as eq
from edgequant.kernels.context import KernelContext
from edgequant.qmath import QParams, round_half_away

from test_hf_inputs import TinyEncoder, batch, cosine


@pytest.fixture(scope="module")
def enc():
    model = TinyEncoder().eval()
    calib = [batch(16, seed=s) for s in range(4)]
    ev = batch(32, seed=77)
    with torch.no_grad():
        ref = model(**ev)
    return model, calib, ev, ref


@pytest.fixture(scope="module")
def q16(enc):
    model, calib, _, _ = enc
    return eq.quantize(model, "w8a16", calib)


def test_attention_path_is_16_bit(q16):
    p = q16.program
    dt = {ins.op: p.tensors[ins.output].dtype for ins in p.instrs}
    assert dt["matmul"] == "int16" and dt["softmax_masked"] == "int16" and dt["layernorm"] == "int16", dt
    assert dt["embedding"] == "int16"  # the token table is int16 on its output grid
    mm = [ins for ins in p.instrs if ins.op == "matmul"]
    assert len(mm) == 2 and all(ins.attrs.get("acc64") for ins in mm)
    assert all(p.tensors[i].dtype == "int16" for ins in mm for i in ins.inputs)  # Q, K, probabilities, V
    sm = next(ins for ins in p.instrs if ins.op == "softmax_masked")
    assert p.tensors[sm.output].qparams.scale == np.float32(2.0**-16) and sm.attrs["out_levels"] == 1 << 16


def test_every_instruction_matches_its_float_twin(q16, enc):
    """Each instruction on the run's own integer inputs vs its SIM twin: <= 1 LSB of its output grid."""
    from float_twins import twin_errors

    p, seen = q16.program, set()
    for ins, d in twin_errors(q16, {k: v.numpy() for k, v in enc[2].items()}):
        assert d <= (0 if ins.op in ("transpose", "reshape", "embedding") else 1), (ins.op, ins.output, d)
        if p.tensors[ins.output].dtype == "int16":
            seen.add(ins.op)
    assert {"matmul", "softmax_masked", "linear", "layernorm", "add", "reduce"} <= seen, seen


def test_int16_masked_softmax_kernel():
    """Masked keys get probability exactly 0; kept ones are within 1 LSB (2^-16) of the exact softmax."""
    from edgequant.kernels.masked import softmax_masked_run
    from edgequant.kernels.transformer import softmax_exp_table
    from edgequant.lower.transformer import softmax_qparams
    from edgequant.program import Instr, TensorInfo

    rng = np.random.default_rng(0)
    x = rng.integers(-32768, 32768, (3, 2, 5, 6)).astype(np.int16)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    s_x = 3e-4
    qx, qy = QParams(np.float32(s_x), np.int32(0), 16, True, False), softmax_qparams(16)
    ins = Instr("softmax_masked", ["x", "m"], "y", {"axis": -1, "out_levels": 1 << 16, "mask_view": (1, 1, 6)},
                {"exp_table": softmax_exp_table(s_x, 1 << 16)})
    tensors = {"x": TensorInfo("int16", x.shape, qx), "y": TensorInfo("int16", x.shape, qy)}
    keep = np.broadcast_to(mask[:, None, None, :] != 0, x.shape)
    real = torch.softmax(torch.tensor(x * float(np.float32(s_x)), dtype=torch.float64).masked_fill(~torch.tensor(keep), -np.inf), -1)
    for rounding in ("gemmlowp", "onnxruntime"):  # onnxruntime: float32 DQ -> Where -> Softmax -> Q, as exported
        y = softmax_masked_run(ins, [x, mask], KernelContext(rounding, tensors))
        assert y.dtype == np.int16 and (y[~keep] == qy.qmin).all()
        got = (y.astype(np.float64) - int(qy.zero_point)) * float(qy.scale)
        assert np.abs(got - real.numpy()).max() <= 2.0**-16 + 2.0**-20  # 1 LSB (+ the Q20 exp table)


def test_int16_matmul_kernel_is_exact_before_requantization():
    from edgequant.kernels.transformer import matmul_run
    from edgequant.lower.core import requant_arrays
    from edgequant.program import Instr, TensorInfo

    rng = np.random.default_rng(1)
    a = rng.integers(-32768, 32768, (2, 3, 7, 32)).astype(np.int16)
    b = rng.integers(-32768, 32768, (2, 3, 32, 5)).astype(np.int16)
    qa = QParams(np.float32(1e-3), np.int32(0), 16, True, False)
    qb = QParams(np.float32(2e-3), np.int32(-32768), 16, True, False)  # a probability-style zero point
    qy = QParams(np.float32(5e-2), np.int32(0), 16, True, False)
    real = 0.25 * 1e-3 * 2e-3 / 5e-2
    ins = Instr("matmul", ["a", "b"], "y", {"alpha": 0.25, "acc64": True}, requant_arrays(np.array([real]), np.array([real], np.float32)))
    tensors = {"a": TensorInfo("int16", a.shape, qa), "b": TensorInfo("int16", b.shape, qb), "y": TensorInfo("int16", (2, 3, 7, 5), qy)}
    y = matmul_run(ins, [a, b], KernelContext("gemmlowp", tensors))
    acc = np.matmul(a.astype(object), (b.astype(np.int64) + 32768).astype(object))  # exact Python integers
    want = np.clip(np.array([float(v) * real for v in acc.reshape(-1)]).reshape(acc.shape), -32768, 32767)
    assert y.dtype == np.int16 and np.abs(y - want).max() <= 1.0


def test_w8a16_is_closer_to_fp32_than_w8a16_res_and_w8a8(enc, q16):
    model, calib, ev, ref = enc
    c = {r: float(cosine(eq.quantize(model, r, calib).run(ev), ref).mean()) for r in ("w8a8-pc", "w8a16-res")}
    c["w8a16"] = float(cosine(q16.run(ev), ref).mean())
    assert c["w8a16"] > 0.9995 and c["w8a16"] >= c["w8a16-res"] >= c["w8a8-pc"], c


def test_default_recipe_is_chosen_from_the_graph(enc, q16):
    model, calib, ev, _ = enc
    q = eq.quantize(model, calib=calib)
    assert q.recipe.name == "w8a16" and q.program.meta["recipe_choice"]["recipe"] == "w8a16"
    assert "layernorm" in q.program.meta["recipe_choice"]["why"]
    np.testing.assert_array_equal(np.asarray(q.run(ev, return_int=True)), np.asarray(q16.run(ev, return_int=True)))
    named = eq.quantize(model, "w8a8-pc", calib)  # a named recipe keeps its meaning
    assert "recipe_choice" not in named.program.meta
    assert all(t.dtype != "int16" for t in named.program.tensors.values())
    cnn = eq.quantize(eq.models.digits_cnn(pretrained=True), calib=torch.randn(16, 1, 8, 8))
    assert cnn.recipe.name == "w8a8-pc" and cnn.program.meta["recipe_choice"]["recipe"] == "w8a8-pc"


def test_gptq_4_bit_runs_on_a_transformer_and_beats_nearest(enc):
    """GPTQ on a graph with a padding mask and attention (one fake-quantized pass): its integers stay
    on the 4-bit grid and the program is closer to fp32 than nearest rounding on the same grid."""
    model, calib, ev, ref = enc
    r = eq.get_recipe("w4a16-gptq")
    q = eq.quantize(model, r, calib)
    nearest = dataclasses.replace(r, name="w4a16-nearest", options=tuple(
        (k, v) for k, v in r.options if k not in ("reconstruct", "weight_method", "reconstruct_base")))
    qn = eq.quantize(model, nearest, calib)
    lin = [ins for ins in q.program.instrs if ins.op == "linear"]
    assert len(lin) == 4 and all(np.abs(ins.arrays["weight"].astype(int)).max() <= 7 for ins in lin)
    unit = q.program.meta["reconstruct"]["units"][0]
    assert unit["unit"] == "graph (one pass)" and unit["loss_end"] < unit["loss_start"]  # Hessian-weighted error
    cg, cn = float(cosine(q.run(ev), ref).mean()), float(cosine(qn.run(ev), ref).mean())
    assert cg > cn, (cg, cn)


def test_sweep_labels():
    from edgequant.sweep import report

    row = {"mode": "static", "weight_bits": 8, "act_bits": 8}
    assert report._bits({**row, "act16": "all"}) == "W8A16"
    assert report._bits({**row, "weight_bits": 4, "act16": "all"}) == "W4A16"


@pytest.mark.parametrize("d,scale,eps", [(32, 2e-4, 1e-5), (384, 5e-3, 1e-12)])
def test_int16_layernorm_kernel_within_one_lsb(d, scale, eps):
    """int16 in and out: the Q16 normalised value keeps the output within 1 LSB of the int16 grid
    (Q12 left up to 2 LSB)."""
    from edgequant.ir import Node
    from edgequant.lower import Lowering
    from edgequant.lower.transformer import _s_layernorm
    from edgequant.program import TensorInfo
    from edgequant.kernels import RUN

    rng = np.random.default_rng(d)
    x = rng.integers(-32768, 32768, (50, d), dtype=np.int64).astype(np.int16)
    x[0] = 17  # zero variance: the output is beta
    x[1, :] = rng.integers(-2, 3, d)  # tiny variance: eps matters
    gamma = rng.normal(1, 0.5, d).astype(np.float32)
    beta = rng.normal(0, 0.5, d).astype(np.float32)
    qx = QParams(np.float32(scale), np.int32(0), 16, True, False)
    qy = QParams(np.float32(8.0 / 32768), np.int32(0), 16, True, False)
    node = Node("ln", "layernorm", ["x"], {"eps": eps}, {"weight": gamma, "bias": beta}, (50, d))
    L = Lowering(None, eq.get_recipe("w8a16"), {"ln": qy})
    L.tensors["x"] = TensorInfo("int16", (50, d), qx)
    L.where["x"] = "x"
    _s_layernorm(L, node)
    ins = L.instrs[-1]
    assert ins.attrs["frac_bits"] == 16 and ins.attrs["acc64"] and ins.arrays["bias"].dtype == np.int64
    y = RUN["layernorm"](ins, [x], KernelContext("gemmlowp", L.tensors)).astype(np.int64)
    xf = torch.as_tensor(x.astype(np.float64) * float(np.float32(scale)))
    ref_f = torch.nn.functional.layer_norm(xf, (d,), torch.as_tensor(gamma, dtype=torch.float64),
                                           torch.as_tensor(beta, dtype=torch.float64), eps)
    ref = np.clip(round_half_away(ref_f.numpy() / float(qy.scale)), -32768, 32767)
    diff = np.abs(y - ref)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.9, (diff.max(), (diff == 0).mean())


def test_artifact_round_trip_of_a_16_bit_attention_program(tmp_path):
    """int16 matmul/softmax/LayerNorm instructions (no ONNX Runtime softmax table) save and load."""
    from test_act16 import _bert_layer

    m = _bert_layer()
    x = torch.randn(40, 8, 32, generator=torch.Generator().manual_seed(3))
    q = eq.quantize(m, calib=x[:32])
    assert q.recipe.name == "w8a16" and any(q.program.tensors[i.output].dtype == "int16" for i in q.program.instrs
                                            if i.op == "softmax")
    q.save(str(tmp_path / "m"))
    q2 = eq.load(str(tmp_path / "m"))
    for mode in ("gemmlowp", "onnxruntime"):
        np.testing.assert_array_equal(np.asarray(q.run(x[32:].numpy(), rounding=mode)),
                                      np.asarray(q2.run(x[32:].numpy(), rounding=mode)))
    assert q2.program.meta["recipe_choice"]["recipe"] == "w8a16"
