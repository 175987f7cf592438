"""The edgequant command: bad input is one paragraph and exit code 2; the subcommands work end to end."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import edgequant as eq
from edgequant import cli

USER = textwrap.dedent('''
    import torch
    import torch.nn as nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)).eval()

    def loaders():
        x = torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = build()(x).argmax(1)
        return [(x[:64], y[:64])], [(x[64:], y[64:])]

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = x.flatten(1)
            if x.sum() > 0:  # data-dependent Python control flow: cannot be traced
                return self.fc(x)
            return -self.fc(x)

    def branchy():
        return Branchy().eval()

    def not_a_model():
        return 42

    def raises():
        raise ValueError("weights file is gone")

    def one_loader():
        return torch.zeros(3, 1, 8, 8)

    def bad_batches():
        return [1, 2, 3], [(torch.zeros(2, 1, 8, 8), torch.zeros(2))]

    def empty_eval():
        return [(torch.zeros(2, 1, 8, 8), torch.zeros(2))], []

    def wrong_shape():
        return [(torch.zeros(2, 3, 5, 5), torch.zeros(2))], [(torch.zeros(2, 3, 5, 5), torch.zeros(2))]

    def text_metric(logits, y):
        return "good"
''')


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("user") / "user_net.py"
    p.write_text(USER)
    (p.parent / "broken.py").write_text("import numpy\nraise RuntimeError('half-written file')\n")
    return p


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("edgequant: error: ") and err.count("\n") == 1, err  # one paragraph
    return err


@pytest.mark.parametrize("args, expect", [
    (["--model", "nowhere/missing.py:build"], "file 'nowhere/missing.py' not found"),
    (["--model", "{u}:buld"], "has no function 'buld'; functions defined there: Branchy, bad_batches, branchy, build"),
    (["--model", "{u}:not_a_model"], "returned a int; it must return a torch.nn.Module"),
    (["--model", "{u}:raises"], "raised ValueError: weights file is gone"),
    (["--model", "{u}:branchy"], "cannot be quantized as written"),
    (["--model", "{d}/broken.py:build"], "RuntimeError: half-written file"),
    (["--model", "{u}"], "expected FILE.py:FUNC"),
    (["--data", "{u}:one_loader"], "must return (calib, eval) or (calib, eval, train)"),
    (["--data", "{u}:bad_batches"], "calibration batch 0 is a int; every batch must be an (x, y) pair"),
    (["--data", "{u}:empty_eval"], "the evaluation set is empty"),
    (["--model", "{u}:build", "--data", "{u}:wrong_shape"], "--model"),
    (["--model", "{u}:build", "--data", "{u}:loaders", "--metric", "{u}:text_metric"], "returned a str"),
    (["--recipes", "w9a9"], "unknown recipe 'w9a9'"),
    (["--budget", "-1"], "must be >= 0"),
])
def test_bad_input_is_one_paragraph_and_exit_2(user, tmp_path, capsys, args, expect):
    args = [a.format(u=user, d=user.parent) for a in args]
    code = cli.main(["sweep", "--quiet", "--out", str(tmp_path), "--recipes", "w8a8", *args]
                    if "--recipes" not in args else ["sweep", "--quiet", "--out", str(tmp_path), *args])
    assert code == 2
    err = _err(capsys)
    assert expect.format(u=user) in err
    assert not (tmp_path / "report.json").exists()


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "--preset", "everything"])
    assert e.value.code == 2
    assert cli.main([]) == 2  # no subcommand: help, exit 2


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for sub in ("sweep", "quantize", "run", "export", "inspect"):
        assert sub in out


def test_python_dash_m_and_exit_code_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgequant", "sweep", "--model", str(tmp_path / "absent.py") + ":build",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "absent.py" in r.stderr and "not found" in r.stderr


def test_quantize_run_inspect_export(user, tmp_path, capsys):
    art, res = tmp_path / "m", tmp_path / "q.json"
    assert cli.main(["quantize", "--model", f"{user}:build", "--data", f"{user}:loaders", "--recipe", "w8a8",
                     "-o", str(art), "--json", str(res)]) == 0
    info = json.loads(res.read_text())
    q = eq.load(art)
    assert info["recipe"] == "w8a8" and info["size_bytes"] == q.size_bytes and info["artifact"] == str(art)
    assert 80.0 <= info["accuracy"] <= 100.0  # labels are the float model's predictions

    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["run", str(art), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                     "--json", str(tmp_path / "r.json")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), q.run(x))
    assert json.loads((tmp_path / "r.json").read_text())["argmax"] == q.run(x).argmax(1).tolist()

    assert cli.main(["inspect", str(art), "--json", str(tmp_path / "i.json")]) == 0
    ins = json.loads((tmp_path / "i.json").read_text())
    assert [i["op"] for i in ins["instrs"]] == [i.op for i in q.program.instrs]
    assert cli.main(["inspect", "--model", f"{user}:build", "--data", f"{user}:loaders"]) == 0
    assert "conv" in capsys.readouterr().out

    assert cli.main(["run", str(tmp_path / "nope")]) == 2
    assert "not found" in _err(capsys)
    if importlib.util.find_spec("edgequant.export") is not None:
        assert cli.main(["export", str(art), "-o", str(tmp_path / "m.onnx")]) == 0
        assert (tmp_path / "m.onnx").stat().st_size > 0


def test_recipes_lists_presets(tmp_path):
    assert cli.main(["recipes", "--json", str(tmp_path / "r.json")]) == 0
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "r.json").read_text())["recipes"]}
    assert "int8" in rows["w8a8-pc"]["presets"] and rows["fp32"]["weight_bits"] == 32


def test_max_minutes_counts_from_the_call_in_a_long_lived_process(monkeypatch):
    """A notebook or test process may be older than --max-minutes: the sweep's budget starts at main(argv)."""
    import time

    from edgequant import cli

    monkeypatch.setattr(cli, "_process_age_s", lambda: 3600.0)  # an hour-old kernel
    monkeypatch.setattr(cli, "_CALLED_AT", time.monotonic())
    assert cli._minutes_left(20.0) > 19.9
    monkeypatch.setattr(cli, "_CALLED_AT", None)  # the `edgequant` command: imports count
    assert cli._minutes_left(20.0) == 0.05
