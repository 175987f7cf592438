"""edgequant sweep: a user model and data from a file, the numbers it reports, the files it writes."""
from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import edgequant as eq
from edgequant import cli
from edgequant.errors import RecipeError
from edgequant.recipes import RECIPES, LayerOverride, Recipe
from edgequant.sweep import layers, plugins, presets, runner

# A user's file: a small conv net (BN, ReLU, pooling, flatten, linear) and data whose labels are the
# float model's own predictions, so fp32 scores 100% and every drop is quantization's doing.
PLUGIN = textwrap.dedent('''
    import torch
    import torch.nn as nn

    def build():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
        return m.eval()

    def loaders():
        g = torch.Generator().manual_seed(1)
        x = torch.rand(456, 1, 8, 8, generator=g)
        with torch.no_grad():
            y = build()(x).argmax(1)
        calib = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
        ev = ((x[i:i + 100], y[i:i + 100]) for i in range(256, 456, 100))  # a generator: read once
        return calib, ev

    def wrong_labels():  # labels that do not belong to the inputs (a preprocessing/label mix-up)
        calib, ev = loaders()
        return calib, [(x, (y + 1 + torch.arange(len(y)) % 9) % 10) for x, y in ev]

    def unlabeled():  # calibration as bare inputs (labels are not needed to calibrate)
        calib, ev = loaders()
        return [x for x, _ in calib], ev

    def unlabeled_eval():
        calib, ev = loaders()
        return calib, [x for x, _ in ev]

    def fraction_top1(logits, y):
        return float((logits.argmax(1) == y).float().mean())
''')


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("user") / "mynet.py"
    p.write_text(PLUGIN)
    return p


@pytest.fixture(scope="module")
def user(plugin):
    model = plugins.load_model(f"{plugin}:build")
    data = plugins.load_data(f"{plugin}:loaders")
    return model, data


@pytest.fixture(scope="module")
def swept(plugin, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    code = cli.main(["sweep", "--model", f"{plugin}:build", "--data", f"{plugin}:loaders", "--recipes", "w8a8-pc,fp16,dyn8",
                     "--out", str(out / "run"), "--json", str(out / "copy.json"), "--quiet", "--repeats", "2",
                     "--latency-batch", "16"])
    return code, out / "run", out / "copy.json"


def _accuracy(q, batches) -> float:
    logits = np.concatenate([q.run(x.numpy()) for x, _ in batches])
    y = torch.cat([b[1] for b in batches]).numpy()
    return 100.0 * float(np.mean(logits.argmax(1) == y))


def test_sweep_user_plugins_writes_everything(swept, capsys):
    code, run, copy = swept
    assert code == 0
    for name in ("report.json", "report.md", "frontier.png", "layers.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 500, name
    for png in ("frontier.png", "layers.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((run / "report.json").read_text())
    assert json.loads(copy.read_text())["rows"] == rep["rows"]  # --json PATH is the same report
    assert rep["schema_version"] == runner.SCHEMA_VERSION
    for key in ("schema_version", "config", "model", "data", "metric", "baseline", "rows", "layers", "answer", "wall_s"):
        assert key in rep
    assert [r["recipe"] for r in rep["rows"]] == ["fp32", "w8a8-pc", "fp16", "dyn8"]
    for r in rep["rows"]:
        assert r["status"] == "ok", r["error"]
        for key in ("recipe", "accuracy", "drop", "size_bytes", "size_ratio", "latency_ms", "runtime", "quantize_s",
                    "sim_agreement_pct", "latency_by_runtime"):
            assert r[key] is not None, key
        assert r["runtime"] in r["latency_by_runtime"] and r["latency_ms"] == min(r["latency_by_runtime"].values())
        assert r["drop"] == pytest.approx(rep["baseline"]["accuracy"] - r["accuracy"])
    assert rep["baseline"]["accuracy"] == 100.0  # labels are the float model's predictions
    sizing = rep["data"].pop("sizing")  # a small model keeps the configured counts
    assert rep["data"] == {"spec": rep["data"]["spec"], "calib_samples": 256, "eval_samples": 200, "latency_batch": 16,
                           "layer_samples": 200}
    assert (sizing["latency_batch"], sizing["sensitivity_samples"]) == (16, None)
    md = (run / "report.md").read_text()
    assert "## Answer" in md and "w8a8-pc" in md and "frontier.png" in md


def test_sweep_numbers_match_the_api(swept, user):
    """Accuracy and size in the report are those of eq.quantize's program, not estimates."""
    _, run, _ = swept
    model, data = user
    rep = json.loads((run / "report.json").read_text())
    rows = {r["recipe"]: r for r in rep["rows"]}
    for name in ("w8a8-pc", "fp16", "dyn8"):
        q = eq.quantize(model, name, [x for x, _ in data.calib])
        assert rows[name]["accuracy"] == pytest.approx(_accuracy(q, data.eval), abs=1e-9)
        assert rows[name]["size_bytes"] == q.size_bytes
        assert rows[name]["size_ratio"] == pytest.approx(q.size_bytes / rows["fp32"]["size_bytes"])
    assert rows["fp16"]["size_ratio"] == pytest.approx(0.5, abs=0.01)
    assert rows["w8a8-pc"]["size_ratio"] < 0.3
    assert rows["w8a8-pc"]["sim_agreement_pct"] >= 99.0
    assert rows["w8a8-pc"]["sim_max_diff_lsb"] <= 2.0


def test_sweep_answer_and_artifact(swept, user):
    _, run, _ = swept
    model, data = user
    rep = json.loads((run / "report.json").read_text())
    ok = [r for r in rep["rows"] if r["drop"] <= rep["answer"]["budget_points"] + 1e-9]
    small, fast = rep["answer"]["smallest"], rep["answer"]["fastest"]
    assert small["size_bytes"] == min(r["size_bytes"] for r in ok)
    assert fast["latency_ms"] == min(r["latency_ms"] for r in ok)
    assert small["recipe"] in rep["answer"]["line"] and fast["recipe"] in rep["answer"]["line"]
    # the saved model is the measured one: same outputs as quantizing again
    loaded = eq.load(small["artifact"])
    assert Path(small["artifact"]).parent == run
    q = eq.quantize(model, small["recipe"], [x for x, _ in data.calib])
    x = data.eval_x
    np.testing.assert_array_equal(loaded.run(x.numpy()), q.run(x.numpy()))


def test_sweep_layers_in_report(swept):
    _, run, _ = swept
    rep = json.loads((run / "report.json").read_text())
    sq = rep["layers"]["sqnr"]
    assert set(sq) == {"w8a8-pc", "fp16", "dyn8"}  # fp32 has no quantized layer
    assert [l["layer"] for l in sq["w8a8-pc"]] == ["conv2d", "conv2d_1", "linear"]
    assert all(l["sqnr_db"] > 15 for l in sq["w8a8-pc"])
    assert all(a["sqnr_db"] > b["sqnr_db"] for a, b in zip(sq["fp16"], sq["w8a8-pc"]))  # fp16 is much closer
    sens = rep["layers"]["sensitivity"]
    assert sens["recipe"] == "w8a8-pc"  # the lowest post-training recipe of this sweep
    assert [l["layer"] for l in sens["layers"]] == ["conv2d", "conv2d_1", "linear"]


def test_sqnr_of_last_layer_is_the_output_sqnr(user):
    model, data = user
    q = eq.quantize(model, "w8a8", [x for x, _ in data.calib])
    g = eq.api.capture_prepared(model, data.calib[0][0][:2])
    x = data.eval_x[:64]
    last = layers.layer_sqnr(q.program, g, x)[-1]
    with torch.no_grad():
        ref = model(x).numpy()
    assert last["sqnr_db"] == pytest.approx(layers.sqnr_db(ref, q.run(x.numpy())), rel=1e-3)


def test_sensitivity_finds_the_one_coarse_layer(user):
    """A recipe that is 8-bit everywhere except one 2-bit layer: that layer must stand out."""
    model, data = user
    g = eq.api.capture_prepared(model, data.calib[0][0][:2])
    coarse = g.node("conv2d_1").module
    plain = dataclasses.replace(RECIPES["w8a8-pc"], options=())  # bias correction would soften the coarse layer
    r = plain.with_overrides(LayerOverride(coarse, weight_bits=2, act_bits=2))
    q = eq.quantize(model, r, [x for x, _ in data.calib])
    score = lambda logits, y: 100.0 * float((logits.argmax(1) == y).float().mean())  # noqa: E731
    sens = {s["layer"]: s for s in layers.sensitivity(q.program, g, data.eval, score)}
    assert sens["conv2d_1"]["weight_bits"] == 2
    assert sens["conv2d_1"]["score"] < min(s["score"] for n, s in sens.items() if n != "conv2d_1") - 5
    assert min(s["score"] for n, s in sens.items() if n != "conv2d_1") > 90
    sq = {s["layer"]: s["sqnr_db"] for s in layers.layer_sqnr(q.program, g, data.eval_x[:64])}
    assert sq["conv2d_1"] < sq["conv2d"] - 10


def test_metric_plugin_fraction_is_read_as_percent(plugin, user, tmp_path):
    model, data = user
    res = runner.run_sweep(runner.SweepConfig(model=f"{plugin}:build", data=f"{plugin}:loaders",
                                              metric=f"{plugin}:fraction_top1", recipes=["w8a8"], repeats=1,
                                              latency_batch=8, sensitivity=False, out=str(tmp_path)))
    assert res.report["metric"]["scaled_from_fraction"] is True
    assert res.report["metric"]["name"] == "mynet.py:fraction_top1"  # axis labels: the file's name, not its path
    assert res.report["baseline"]["accuracy"] == 100.0
    q = eq.quantize(model, "w8a8", [x for x, _ in data.calib])
    assert res.report["rows"][1]["accuracy"] == pytest.approx(_accuracy(q, data.eval))


def test_failing_recipe_is_a_failed_row_not_a_crash(plugin, tmp_path, monkeypatch):
    bad = Recipe("w8a8-broken", "static", weights=RECIPES["w8a8"].weights, activations=RECIPES["w8a8"].activations,
                 options=(("weight_method", "no-such-method"),))
    monkeypatch.setitem(RECIPES, bad.name, bad)
    res = runner.run_sweep(runner.SweepConfig(model=f"{plugin}:build", data=f"{plugin}:loaders",
                                              recipes=["w8a8-broken", "w8a8"], repeats=1, latency_batch=8,
                                              sensitivity=False, out=str(tmp_path)))
    rows = {r["recipe"]: r for r in res.report["rows"]}
    assert rows["w8a8-broken"]["status"] == "failed" and "no-such-method" in rows["w8a8-broken"]["error"]
    assert rows["w8a8"]["status"] == "ok"
    assert res.report["answer"]["smallest"]["recipe"] == "w8a8"


def _row(name, acc, size, ms, drop=None):
    return {"recipe": name, "status": "ok", "accuracy": acc, "drop": 100 - acc if drop is None else drop,
            "size_bytes": size, "latency_ms": ms, "qat": False, "mode": "static", "weight_bits": 8, "act_bits": 8}


def test_pareto_and_choice():
    rows = [_row("a", 100, 100, 5), _row("b", 99.5, 50, 1), _row("c", 99.0, 60, 0.5), _row("d", 90, 10, 2),
            {"recipe": "e", "status": "failed"}]
    assert runner.pareto(rows, "size_bytes") == {"a", "b", "d"}  # c is bigger and worse than b
    assert runner.pareto(rows, "latency_ms") == {"a", "b", "c"}  # d is slower and worse than c
    small, fast = runner.choose(rows, budget=1.0)
    assert (small["recipe"], fast["recipe"]) == ("b", "c")
    small, fast = runner.choose(rows, budget=0.6)
    assert (small["recipe"], fast["recipe"]) == ("b", "b")
    assert runner.choose([_row("x", 50, 1, 1)], budget=1.0) == (None, None)


def test_presets():
    int8 = [p.label for p in presets.resolve(None, "int8", 0)]
    assert int8 == ["fp32", "fp16", "dyn8", "w8a8", "w8a8-pc", "w8a16-res"]
    low = presets.resolve(None, "lowbit", 0)
    assert all(min(presets.bits(RECIPES[p.recipe])) < 8 for p in low if p.recipe != "fp32")
    every = [p.label for p in presets.resolve(None, "all", 0)]  # QAT recipes left out without epochs
    assert every[0] == "fp32" and set(int8) <= set(every)
    assert not any(presets.is_qat_recipe(RECIPES[n]) for n in every)
    assert set(every) == {n for n, r in RECIPES.items() if not presets.is_qat_recipe(r)}
    # the default sweep: every family, reconstruction at the sweep budget, QAT only with a train set
    default = presets.resolve(None, None, presets.default_qat_epochs(None, None))
    assert presets.default_qat_epochs(None, None) == 1 and presets.default_qat_epochs("all", None) == 3
    assert set(int8) | set(presets.LOWBIT_ORDER) <= {p.label for p in default}
    recon = [p for p in default if presets.is_reconstruction(RECIPES[p.recipe])]
    assert recon and all(p.resolved().option("iterations") == presets.DEFAULT_ITERATIONS for p in recon)
    assert all(p.iterations is None for p in default if p not in recon)
    qat = {p.label for p in default if p.qat}
    assert qat == {n for n, r in RECIPES.items() if presets.is_qat_recipe(r)}
    assert not any(p.qat for p in presets.resolve(None, None, 1, has_train=False))
    assert [p.resolved().option("iterations") for p in presets.resolve(["w4a4-brecq"], None, 0, iterations=7)][1:] == [7]
    with pytest.raises(RecipeError, match="--iterations 0"):
        presets.resolve(None, None, 1, iterations=0)
    assert [p.label for p in presets.resolve(["w8a8", "fp32", "w8a8"], None, 0)] == ["fp32", "w8a8"]
    with pytest.raises(RecipeError, match="unknown recipe 'w9a9'"):
        presets.resolve(["w9a9"], None, 0)
    with pytest.raises(RecipeError, match="either --recipes or --preset"):
        presets.resolve(["w8a8"], "int8", 0)
    with pytest.raises(RecipeError, match="unknown preset"):
        presets.resolve(None, "everything", 0)


def test_preset_qat_rows_are_left_out_with_a_note_when_data_has_no_train_split(plugin, tmp_path, monkeypatch):
    """Presets add QAT rows on their own; a user's (calib, eval) data must not make the sweep fail."""
    keep = {"fp32", "w8a8", "w4a4-qat"}
    if "w4a4-qat" not in RECIPES:
        pytest.skip("no QAT recipes in this build")
    for name in [n for n in RECIPES if n not in keep]:
        monkeypatch.delitem(RECIPES, name)
    res = runner.run_sweep(runner.SweepConfig(model=f"{plugin}:build", data=f"{plugin}:loaders", preset="all",
                                              repeats=1, latency_batch=8, sensitivity=False, out=str(tmp_path)))
    assert [r["recipe"] for r in res.report["rows"]] == ["fp32", "w8a8"]
    assert res.report["config"]["qat_epochs"] == 3 and "no training set" in res.report["notes"][0]
    with pytest.raises(eq.errors.PluginError, match="needs a training set"):  # asked for by name: an error
        runner.run_sweep(runner.SweepConfig(model=f"{plugin}:build", data=f"{plugin}:loaders", recipes=["w4a4-qat"],
                                            repeats=1, latency_batch=8, sensitivity=False, out=str(tmp_path)))


def test_fp32_near_chance_gets_a_note(plugin, tmp_path, swept):
    """A baseline near chance means the data does not fit the model; the report says so."""
    res = runner.run_sweep(runner.SweepConfig(model=f"{plugin}:build", data=f"{plugin}:wrong_labels", recipes=["w8a8"],
                                              repeats=1, latency_batch=8, sensitivity=False, out=str(tmp_path)))
    assert res.report["baseline"]["accuracy"] < 20
    assert any("close to chance" in n and "10 classes" in n for n in res.report["notes"])
    report = json.loads((swept[1] / "report.json").read_text())
    assert report["baseline"]["accuracy"] == 100.0 and not any("chance" in n for n in report["notes"])



EQUALIZABLE = textwrap.dedent('''
    import torch
    import torch.nn as nn

    def build():  # conv -> ReLU -> conv -> mean -> linear, stem channels 1-3 ~30x the others
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        with torch.no_grad():
            m[0].weight[:3] *= 30.0
        return m.eval()

    def loaders():
        g = torch.Generator().manual_seed(1)
        x = torch.rand(192, 1, 8, 8, generator=g)
        with torch.no_grad():
            y = build()(x).argmax(1)
        return [(x[:64], y[:64])], [(x[64:], y[64:])]
''')


def test_sqnr_of_an_equalized_recipe_is_against_its_own_float_graph(tmp_path):
    """Equalization rescales channels inside the net (same output): the per-layer SQNR of the
    equalizing ``w8a16-res`` is measured against the equalized float graph, so its 16-bit
    activations read at least as close as ``w8a8-pc`` at every layer (against the user's graph
    the rescaled channels read as ~20 dB of error)."""
    p = tmp_path / "eqnet.py"
    p.write_text(EQUALIZABLE)
    res = runner.run_sweep(runner.SweepConfig(model=f"{p}:build", data=f"{p}:loaders", recipes=["w8a8-pc", "w8a16-res"],
                                              repeats=1, latency_batch=8, sensitivity=False, out=str(tmp_path / "o")))
    rows = {r["recipe"]: r for r in res.report["rows"]}
    assert RECIPES["w8a16-res"].option("equalize") and rows["w8a16-res"]["status"] == "ok"
    sq8 = {l["layer"]: l["sqnr_db"] for l in res.report["layers"]["sqnr"]["w8a8-pc"]}
    sq16 = {l["layer"]: l["sqnr_db"] for l in res.report["layers"]["sqnr"]["w8a16-res"]}
    assert sq8.keys() == sq16.keys() and len(sq8) == 3
    assert all(sq16[k] >= sq8[k] - 0.5 for k in sq8), (sq8, sq16)


def test_preset_sweep_shows_the_graphs_default_recipe():
    """A transformer's default (`w8a16`) is in no preset: a preset sweep adds it after the 8-bit rows,
    with a note; a conv net's default is already there; named recipes are left as asked."""
    from edgequant.api import capture_prepared

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln, self.fc = torch.nn.LayerNorm(16), torch.nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(self.ln(x)).mean(1)

    torch.manual_seed(0)
    tf = capture_prepared(Block().eval(), torch.randn(2, 4, 16))
    cnn = capture_prepared(eq.models.digits_cnn(pretrained=False).eval(), torch.randn(2, 1, 8, 8))
    cfg = runner.SweepConfig(preset="int8")
    plans = presets.resolve(None, "int8", 0)
    got, note = runner._with_graph_default(plans, cfg, tf)
    labels = [p.label for p in got]
    assert "w8a16" not in [p.label for p in plans] and labels.index("w8a16") == len(plans)
    assert note and "quantize's default" in note[0] and "w8a16" in note[0]
    assert runner._with_graph_default(plans, cfg, cnn) == (plans, [])
    named = presets.resolve(["w8a8"], None, 0)
    assert runner._with_graph_default(named, runner.SweepConfig(recipes=["w8a8"]), tf) == (named, [])
    # block reconstruction cannot cut a transformer: the default preset's AdaRound/BRECQ rows give way
    # to the transformer W4A8 row, with a note; a conv net keeps them; named recipes are left as asked
    default = presets.resolve(None, "default", 0)
    got, note = runner._fit_reconstruction(default, runner.SweepConfig(preset="default"), tf)
    assert not [p for p in got if "brecq" in p.recipe or "adaround" in p.recipe] and got[-1].recipe == "dyn4-g16-gptq"
    assert note and "left out" in note[0] and "w4a4-brecq" in note[0]
    assert runner._fit_reconstruction(default, runner.SweepConfig(preset="default"), cnn) == (default, [])
    named = presets.resolve(["w4a4-brecq"], None, 0)
    assert runner._fit_reconstruction(named, runner.SweepConfig(recipes=["w4a4-brecq"]), tf) == (named, [])


def test_calibration_batches_may_come_without_labels(plugin):
    data = plugins.load_data(f"{plugin}:unlabeled")
    assert len(data.calib) == 4 and all(y is None and x.shape == (64, 1, 8, 8) for x, y in data.calib)
    assert data.eval_y.shape == (200,)  # evaluation keeps its labels
    with pytest.raises(plugins.PluginError, match=r"evaluation batch 0 is a Tensor; every batch must be an \(x, y\) pair"):
        plugins.load_data(f"{plugin}:unlabeled_eval")
