"""Per-token dynamic activations (``dynamic_scale="token"``), SmoothQuant (``smooth=alpha``) and GPTQ
in dynamic recipes (issue 16): recipes ``dyn8-tok``, ``dyn8-sq``, ``dyn4-g16-gptq``.

What a user relies on: per-token scales beat one scale per batch where one token has an outlier;
smoothing leaves the float function unchanged and lowers the error where a channel has outliers;
the exported ONNX graph computes what ``q.run(x, rounding="onnxruntime")`` computes; bad settings
are refused before any work; the artifact round-trips bit-identically.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import edgequant as eq
from edgequant.errors import RecipeError
from edgequant.graph_exec import GraphModule
from edgequant.reconstruct import with_options

from test_act16_all import enc  # noqa: F401  (the HF-style encoder, calibration and evaluation batches, fp32 output)
from test_hf_inputs import cosine


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    return m


def outlier_tokens(n: int, seed: int) -> torch.Tensor:
    """(n, 10, 16) tokens whose channel 5 is 30x the others (a BERT-style outlier channel)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, 16, generator=g)
    x[:, :, 5] *= 30
    return x


def err(q, x, ref) -> float:
    return float(np.abs(np.asarray(q.run(x)) - ref).mean())


def test_per_token_scales_beat_one_scale_per_batch():
    m = mlp()
    x = torch.randn(8, 10, 16)
    x[0, 3] *= 100  # one loud token
    ref = m(x).detach().numpy()
    per_batch = eq.quantize(m, "dyn8", [x])
    per_token = eq.quantize(m, "dyn8-tok", [x])
    quiet = np.ones(x.shape[:2], bool)
    quiet[0, 3] = False
    e_batch = np.abs(np.asarray(per_batch.run(x)) - ref)[quiet].max()
    e_token = np.abs(np.asarray(per_token.run(x)) - ref)[quiet].max()
    assert e_token < e_batch / 10, (e_token, e_batch)
    assert all(ins.attrs.get("dynamic_scale") == "token" for ins in per_token.program.instrs if ins.op == "linear_dyn")


def test_smoothing_keeps_the_float_function_and_lowers_the_error():
    m = mlp()
    calib, x = outlier_tokens(32, 0), outlier_tokens(16, 1)
    ref = m(x).detach().numpy()
    tok = eq.quantize(m, "dyn8-tok", [calib])
    sq = eq.quantize(m, "dyn8-sq", [calib])
    lin = [n for n in sq.graph.nodes if n.op == "linear"]
    assert all("in_scale" in n.params for n in lin)
    with torch.no_grad():  # the smoothed graph in float is the model
        np.testing.assert_allclose(GraphModule(sq.graph)(x).numpy(), ref, rtol=1e-4, atol=1e-4)
    assert err(sq, x, ref) < 0.75 * err(tok, x, ref) < 0.75 * err(eq.quantize(m, "dyn8", [calib]), x, ref) / 3
    y = np.asarray(sq.run(x))
    d = np.abs(np.asarray(sq.simulate(x).detach(), np.float32) - y)  # float64 twin: an input LSB flips at ties
    assert float((d < 1e-4).mean()) > 0.95 and float(d.max()) < 0.02, (float((d < 1e-4).mean()), float(d.max()))
    # the same smoothed graph lowered to fp32 folds the factors back into the weights
    fp = eq.quantize(m, "fp32", [calib])
    np.testing.assert_allclose(np.asarray(fp.run(x)), ref, atol=1e-4)


GROUPED = {"dyn4-g12-tok": with_options("dyn4-g16-gptq", weight_group=12),  # 16 columns: a short last group
           "dyn4-g8-batch": with_options("dyn4-g16-gptq", weight_group=8, dynamic_scale="tensor")}


@pytest.mark.parametrize("recipe", ["dyn8-tok", "dyn8-sq", "dyn8", *GROUPED])
def test_onnx_runtime_computes_the_onnxruntime_mode(recipe, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = mlp()
    calib, x = outlier_tokens(32, 0), outlier_tokens(16, 1)
    q = eq.quantize(m, GROUPED.get(recipe, recipe), [calib])
    assert (recipe in GROUPED) == all("w_group_mult" in i.arrays for i in q.program.instrs if i.op == "linear_dyn")
    q.export(tmp_path / "m.onnx")
    s = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    want = np.asarray(q.run(x, rounding="onnxruntime"))
    # identical integer GEMMs; the float GELU/rescale may differ in the last bit
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bad_settings_are_refused_before_any_work():
    m = mlp()
    x = outlier_tokens(8, 0)
    for r, match in ((with_options("dyn8", smooth=1.5), "alpha in"), (with_options("w8a8-pc", smooth=0.5), "dynamic recipe"),
                     (with_options("dyn8", dynamic_scale="channel"), "dynamic_scale"),
                     (with_options("w8a8-pc", dynamic_scale="token"), "dynamic_scale")):
        with pytest.raises(RecipeError, match=match):
            eq.quantize(m, r, [x])
    with pytest.raises(eq.EdgequantError, match="calibration data"):
        eq.quantize(m, "dyn8-sq", example_input=x)


def test_encoder_with_masks_per_token_smoothed_and_gptq(enc, tmp_path):
    model, calib, ev, ref = enc
    sq = eq.quantize(model, "dyn8-sq", calib)
    assert float(cosine(sq.run(ev), ref).min()) > 0.999
    sq.save(tmp_path / "sq")
    back = eq.load(tmp_path / "sq")
    np.testing.assert_array_equal(np.asarray(back.run(ev)), np.asarray(sq.run(ev)))
    g = eq.quantize(model, with_options("dyn4-g16-gptq", weight_group=8), calib)
    r = with_options("dyn4-g16-gptq", weight_group=8)
    nearest = eq.quantize(model, dataclasses.replace(r, name="dyn4-g8", options=tuple(
        (k, v) for k, v in r.options if k in ("weight_group", "dynamic_scale"))), calib)  # round to nearest, same grid
    c_g, c_n = float(cosine(g.run(ev), ref).mean()), float(cosine(nearest.run(ev), ref).mean())
    assert c_g > c_n and c_g > 0.99, (c_g, c_n)


def test_layer_errors_on_keyword_batches_say_where_fidelity_goes(enc, tmp_path):
    model, calib, ev, _ = enc
    static, sq = eq.quantize(model, "w8a8-pc", calib), eq.quantize(model, "dyn8-sq", calib)
    rows_static, rows_sq = static.layer_errors(ev), sq.layer_errors(ev)
    assert [r["module"] for r in rows_sq] == [r["module"] for r in rows_static] and len(rows_sq) == 4
    assert all(r["op"] == "linear_dyn" and r["weight_bits"] == 8 for r in rows_sq)
    # per-token scales on smoothed inputs: every layer closer to fp32 than with one static int8 grid
    assert all(a["sqnr_db"] > b["sqnr_db"] + 6 for a, b in zip(rows_sq, rows_static)), (rows_sq, rows_static)
    sq.save(tmp_path / "a")
    with pytest.raises(eq.EdgequantError, match="float graph"):
        eq.load(tmp_path / "a").layer_errors(ev)


def test_grouped_onnx_file_keeps_4_bit_codes_and_one_byte_per_group(tmp_path):
    """The exported file stores the codes (INT4) and the (G, O) multipliers, not the widened weight."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(256, 256)).eval()
    x = torch.randn(8, 4, 256)
    sizes = {}
    for name, r in (("dyn8-tok", "dyn8-tok"), ("g16", with_options("dyn4-g16-gptq", act_order=False))):
        q = eq.quantize(m, r, [x])
        q.export(tmp_path / f"{name}.onnx", int4_weights=True)
        sizes[name] = (tmp_path / f"{name}.onnx").stat().st_size
    # 256 x 256: int8 64 KiB vs 4-bit codes 32 KiB + 16 groups x 256 channels of multipliers 4 KiB
    assert sizes["g16"] < 0.7 * sizes["dyn8-tok"], sizes  # widened multipliers alone would add 64 KiB
