"""edgequant.search: mixed precision under a measured accuracy budget (issue 15)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgequant as eq
from edgequant.errors import BudgetError, RecipeError
from edgequant.mixed import solve as solver
from edgequant.mixed import space as spaces

# search on the first half of the digits test split, hold out the second half
SMALL = dict(sensitivity_samples=128, latency_batch=16, repeats=1, threads=1)


def _halves(digits):
    x = torch.cat([b[0] for b in digits[1]])
    y = torch.cat([b[1] for b in digits[1]])
    h = x.shape[0] // 2
    return [(x[:h], y[:h])], [(x[h:], y[h:])]


def _top1(q, batches) -> float:
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return 100.0 * float((torch.as_tensor(q.run(x.numpy())).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def searched(digits, digits_model):
    calib, _ = digits
    search_half, held_out = _halves(digits)
    res = eq.search(digits_model, calib, search_half, budget=1.0, widths=(8, 4, 2, 1), **SMALL)
    return res, search_half, held_out


def test_budget_holds_on_held_out_split(searched, digits_model):
    res, search_half, held_out = searched
    assert res.drop <= 1.0 + 1e-9
    # the result is really mixed and smaller than every uniform program the search measured within budget
    assert len({w for w, _ in res.widths.values()}) > 1
    uniform_ok = [c["size_bytes"] for c in res.trace if c["step"] == "uniform" and c["drop"] <= 1.0]
    assert res.size_bytes < min(uniform_ok)
    with torch.no_grad():
        xh, yh = held_out[0]
        fp32 = 100.0 * float((digits_model(xh).argmax(1) == yh).float().mean())
    assert fp32 - _top1(res.quantized, held_out) <= 1.0 + 1e-9
    # and the reported accuracy is the integer program's on the search split (reference interpreter)
    assert _top1(res.quantized, search_half) == pytest.approx(res.accuracy, abs=1e-6)


def test_recipe_is_named_frozen_and_reproduced_by_quantize(searched, digits, digits_model, tmp_path):
    res = searched[0]
    r = res.recipe
    assert r.name.startswith("mixed-size") and r.overrides
    assert eq.Recipe.from_json(r.to_json()) == r
    with pytest.raises(Exception):
        r.name = "x"  # frozen
    q2 = eq.quantize(digits_model, r, digits[0])
    x = torch.cat([b[0] for b in digits[1]]).numpy()
    a = res.quantized.run(x, return_int=True)
    assert np.array_equal(a, q2.run(x, return_int=True)) and q2.size_bytes == res.size_bytes
    # the widths the recipe names are the widths the program has
    for ins in res.quantized.program.instrs:
        if "weight_bits" in ins.attrs:
            mod = next(n.module for n in res.quantized.graph.nodes if n.name == ins.node)
            assert ins.attrs["weight_bits"] == res.widths[mod][0]
    # the artifact stores the recipe and round-trips bit-identically
    res.quantized.save(tmp_path / "m.edgequant")
    back = eq.load(tmp_path / "m.edgequant")
    assert back.recipe == r
    assert np.array_equal(back.run(x, return_int=True), a)


def test_same_seed_same_answer(searched, digits, digits_model):
    res, search_half, _ = searched
    again = eq.search(digits_model, digits[0], search_half, budget=1.0, widths=(8, 4, 2, 1), **SMALL)
    assert again.recipe.to_json() == res.recipe.to_json()
    keys = ("step", "assignment", "estimated_noise", "accuracy", "drop", "size_bytes")
    assert [{k: c[k] for k in keys} for c in again.trace] == [{k: c[k] for k in keys} for c in res.trace]


def test_repair_widens_until_the_budget_holds(digits, digits_model, monkeypatch):
    """With an allowance that admits anything, the first candidate is far over budget: repair must
    widen one layer one step at a time until the measured drop is within budget."""
    calib, _ = digits
    search_half, _ = _halves(digits)
    monkeypatch.setattr(solver, "allowance", lambda points, budget: float("inf"))
    res = eq.search(digits_model, calib, search_half, budget=1.0, widths=(8, 4, 2), base="w8a8-pc",
                    max_candidates=16, refine=0, **SMALL)
    steps = [c for c in res.trace if c["step"] in ("solve", "repair")]
    assert steps[0]["step"] == "solve" and steps[0]["drop"] > 1.0
    assert len(steps) >= 2 and all(c["step"] == "repair" for c in steps[1:])
    for prev, cur in zip(steps, steps[1:]):
        changed = [u for u in cur["assignment"] if cur["assignment"][u] != prev["assignment"][u]]
        assert len(changed) == 1  # one layer per repair
        (u,) = changed
        ws = [8, 4, 2]
        assert ws.index(cur["assignment"][u][0]) == ws.index(prev["assignment"][u][0]) - 1  # one step wider
    assert all(c["drop"] > 1.0 for c in steps[:-1]) and steps[-1]["drop"] <= 1.0
    assert res.drop <= 1.0


def test_probe_measures_a_step_when_the_estimate_leaves_no_room(digits, digits_model):
    """Budget 0 with the uniform W8 program at drop 0: the envelope's allowance is exactly its noise,
    so the integer program finds nothing; a probe narrows the layers cheapest in noise per byte,
    is measured, and (within budget) is a smaller answer than every uniform program within budget."""
    calib, _ = digits
    search_half, _ = _halves(digits)
    res = eq.search(digits_model, calib, search_half, budget=0.0, widths=(8, 2), metric="agreement",
                    max_candidates=4, **SMALL)
    uni = {c["option"]: c for c in res.trace if c["step"] == "uniform"}
    assert uni["w8a8"]["drop"] <= 0.0 < uni["w2a8"]["drop"]
    probes = [c for c in res.trace if c["step"] == "probe"]
    assert probes and probes[0]["drop"] <= 0.0
    assert res.drop <= 0.0 and res.size_bytes < uni["w8a8"]["size_bytes"]
    assert any(w == 2 for w, _ in res.widths.values())


def test_latency_objective_and_activation_widths(digits, digits_model):
    calib, _ = digits
    search_half, _ = _halves(digits)
    res = eq.search(digits_model, calib, search_half, budget=1.0, objective="latency", widths=(8, 4),
                    act_widths=(8, 4), **SMALL)
    assert res.objective == "latency" and res.latency_ms is not None and res.latency_ms > 0
    assert res.drop <= 1.0
    assert res.table["ms"] and all(v >= 0 for per in res.table["ms"].values() for v in per.values())
    assert {"w4a4", "w8a4"} <= set(res.table["options"])
    # an A4 override gives that layer's output a 4-bit grid in the program
    r = spaces.recipe_for(res.recipe, {u: (8, 4) if i == 0 else (8, 8) for i, u in enumerate(res.widths)}, "t")
    q = eq.quantize(digits_model, r, calib)
    first = next(iter(res.widths))
    node = next(n.name for n in q.graph.nodes if n.module == first)
    qp = q.program.tensors[next(i.output for i in q.program.instrs if i.node == node)].qparams
    assert (qp.qmin, qp.qmax) == (-8, 7)


def test_mixed_program_exports_to_onnx(searched, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    res = searched[0]
    path = tmp_path / "m.onnx"
    res.quantized.export(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.cat([b[0] for b in searched[1]]).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ref = res.quantized.run(x, rounding="onnxruntime")
    assert np.array_equal(got.argmax(1), ref.argmax(1))


def test_mixed_program_exports_to_tflite_where_widths_allow(searched, digits, digits_model):
    pytest.importorskip("ai_edge_litert")
    from edgequant.errors import ExportError
    from edgequant.export.tflite import to_tflite
    from edgequant.export.tflite.run import run_tflite

    res = searched[0]
    x = torch.cat([b[0] for b in searched[1]]).numpy()
    data = to_tflite(res.quantized)  # 8/4/2/1-bit weights, 8-bit activations: LiteRT runs it bit-exactly
    assert np.array_equal(run_tflite(data, x, "reference"), res.quantized.run(x))
    first = next(iter(res.widths))
    a4 = spaces.recipe_for(res.recipe, {first: (8, 4)}, "a4")  # a 4-bit activation: LiteRT cannot
    with pytest.raises(ExportError, match="4-bit activation"):
        to_tflite(eq.quantize(digits_model, a4, digits[0]))


def test_solver_and_calibration():
    units, opts = ["a", "b"], [(8, 8), (4, 8), (2, 8)]
    noise = {"a": {(8, 8): 0.0, (4, 8): 0.1, (2, 8): 1.0}, "b": {(8, 8): 0.0, (4, 8): 0.2, (2, 8): 0.3}}
    size = {u: {(8, 8): 8.0, (4, 8): 4.0, (2, 8): 2.0} for u in units}
    assert solver.solve(units, opts, noise, size, None, 0.45) == {"a": (4, 8), "b": (2, 8)}
    assert solver.solve(units, opts, noise, size, None, 10.0) == {"a": (2, 8), "b": (2, 8)}
    assert solver.solve(units, opts, noise, size, None, 10.0, forbid=[{"a": (2, 8), "b": (2, 8)}]) != {"a": (2, 8), "b": (2, 8)}
    assert solver.solve(units, opts, {u: {o: 1.0 for o in opts} for u in units}, size, None, 0.5) is None
    pts = [(0.1, 0.0), (0.5, 4.0), (0.3, 5.0)]  # non-monotone: the envelope takes the running maximum
    assert [d for _, d in solver.envelope(pts)] == [0.0, 0.0, 5.0, 5.0]
    assert solver.allowance(pts, 1.0) == pytest.approx(0.1 + 0.2 * 1.0 / 5.0)
    assert solver.allowance([(0.2, 0.0)], 1.0) == pytest.approx(0.2)  # no extrapolation beyond what was measured


def test_bad_input_is_a_clear_error(digits, digits_model):
    calib, test = digits
    for kw, word in ((dict(budget=-1.0), "budget"), (dict(objective="speed"), "objective"),
                     (dict(widths=(9, 4)), "widths"), (dict(act_widths=()), "act_widths"),
                     (dict(base="fp16"), "static")):
        with pytest.raises(RecipeError, match=word):
            eq.search(digits_model, calib, test, **kw)
    with pytest.raises(eq.EdgequantError, match="eval"):
        eq.search(digits_model, calib, [torch.zeros(4, 1, 8, 8)])
    search_half, _ = _halves(digits)
    with pytest.raises(BudgetError, match="budget"):
        eq.search(digits_model, calib, search_half, budget=0.0, widths=(1,), **SMALL)


def test_table_cache_is_reused(digits, digits_model, tmp_path):
    calib, _ = digits
    search_half, _ = _halves(digits)
    cache = tmp_path / "table.json"
    a = eq.search(digits_model, calib, search_half, widths=(8, 2), cache=str(cache), **SMALL)
    assert json.loads(cache.read_text())["table"]["noise"]
    b = eq.search(digits_model, calib, search_half, widths=(8, 2), cache=str(cache), **SMALL)
    assert any(c.get("cached") for c in b.trace) and b.recipe == a.recipe


def test_sweep_mixed_row(tmp_path):
    from edgequant import cli

    out = tmp_path / "run"
    code = cli.main(["sweep", "--recipes", "w8a8-pc,w4a8", "--mixed", "size", "--mixed-widths", "8,4,2,1",
                     "--no-sensitivity", "--quiet", "--repeats", "1", "--latency-batch", "16", "--out", str(out)])
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    rows = {r["recipe"]: r for r in rep["rows"]}
    mx = rows["mixed-size"]
    assert mx["status"] == "ok" and mx["mixed"] and mx["drop"] <= 1.0
    assert mx["size_bytes"] < rows["w4a8"]["size_bytes"] and mx["pareto_size"]  # on the frontier
    assert rep["answer"]["smallest"]["recipe"] == "mixed-size"  # eligible for the answer, and it is the answer
    assert [l["module"] for l in rep["mixed"]["layers"]] == ["features.0.0", "features.1.0", "features.3.0",
                                                              "classifier.1", "classifier.4"]
    back = eq.load(rep["answer"]["smallest"]["artifact"])
    assert [(o.weight_bits, o.act_bits) for o in back.recipe.overrides] == \
        [(l["weight_bits"], l["act_bits"]) for l in rep["mixed"]["layers"]]
    assert (out / "layers.png").stat().st_size > 1000 and "Mixed precision" in (out / "report.md").read_text()


def test_sweep_mixed_row_without_an_answer_fails_alone():
    from edgequant.sweep import SweepConfig, run_sweep

    res = run_sweep(SweepConfig(recipes=["w8a8-pc"], mixed="size", mixed_widths=(1,), budget=0.0, sensitivity=False,
                                repeats=1, latency_batch=8, save=False))
    rows = {r["recipe"]: r for r in res.report["rows"]}
    assert rows["w8a8-pc"]["status"] == "ok"
    assert rows["mixed-size"]["status"] == "failed" and "BudgetError" in rows["mixed-size"]["error"]
