"""The artifact: round trip for every recipe, determinism, validation that names file and field,
atomic writes, and interoperability of the tensor file."""
from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

import edgequant as eq
from edgequant import artifact, packing
from edgequant.errors import ArtifactError
from edgequant.kernels import RUN

# every top-level module, so that all recipes register before the list below is taken
for _m in pkgutil.iter_modules(eq.__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"edgequant.{_m.name}")
RECIPE_NAMES = sorted(eq.RECIPES)
MODES = ("gemmlowp", "onnxruntime")


@pytest.fixture(scope="module")
def digits():
    calib, test = eq.data.digits(batch_size=16, calib_size=32)
    return calib, next(iter(test))[0][:24]


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return eq.models.digits_cnn(pretrained=True)


@pytest.fixture(scope="module")
def resnet_q(digits):
    return eq.quantize(eq.models.resnet_digits(pretrained=True), "w8a8-pc", digits[0])


def cheap(r: eq.Recipe) -> eq.Recipe:
    """The recipe with its optimisation budget (option ``iterations``) cut to 1: what is saved
    does not depend on how long rounding was learned, only the values do."""
    return dataclasses.replace(r, options=tuple((k, 1 if k == "iterations" else v) for k, v in r.options))


def assert_round_trip(q, path: Path, x: torch.Tensor) -> eq.QuantizedModel:
    q.save(path)
    loaded = eq.load(path)
    for mode in MODES:
        a, b = q.run(x, rounding=mode), loaded.run(x, rounding=mode)
        assert a.dtype == b.dtype and torch.equal(a, b), f"{q.recipe.name}: run() differs after load ({mode})"
    ra, rb = q.run(x, return_int=True), loaded.run(x, return_int=True)
    assert torch.equal(ra, rb)
    assert loaded.recipe == q.recipe
    assert loaded.size_bytes == q.size_bytes and loaded.float_size_bytes == q.float_size_bytes
    assert loaded.graph is None  # the float graph is not part of the artifact (module docstring)
    for i, j in zip(q.program.instrs, loaded.program.instrs):
        assert (i.op, i.inputs, i.output, i.node, i.attrs) == (j.op, j.inputs, j.output, j.node, j.attrs)
        assert i.arrays.keys() == j.arrays.keys()
        for k in i.arrays:
            assert i.arrays[k].dtype == j.arrays[k].dtype and np.array_equal(i.arrays[k], j.arrays[k])
    return loaded


# -- round trip ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_round_trip_is_bit_identical(name, cnn, digits, tmp_path):
    calib, x = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = eq.quantize(cnn, cheap(eq.RECIPES[name]), calib)
    assert_round_trip(q, tmp_path / "m", x)


def test_recipes_registered_later_are_covered(cnn, digits, tmp_path):
    """A recipe registered after collection (by an import elsewhere) is round-tripped here."""
    calib, x = digits
    for name in sorted(set(eq.RECIPES) - set(RECIPE_NAMES)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = eq.quantize(cnn, cheap(eq.RECIPES[name]), calib)
        assert_round_trip(q, tmp_path / name, x)


def test_resnet_round_trip_and_calibration_summary(resnet_q, digits, tmp_path):
    loaded = assert_round_trip(resnet_q, tmp_path / "r", digits[1])
    man = artifact.read_manifest(tmp_path / "r")
    assert man["calibration"]["samples"] == 32 and man["calibration"]["observer"] == "minmax"
    assert man["model"]["input_shape"][1:] == [1, 8, 8] and man["recipe"] == "w8a8-pc"
    assert loaded.program.meta["calibration"] == resnet_q.program.meta["calibration"]


def test_sub_byte_weights_are_packed(cnn, digits, tmp_path):
    r = eq.Recipe("w4-test", "static", weights=eq.TensorSpec(4, symmetric=True, narrow=True, per_channel=True),
                  activations=eq.TensorSpec(8))
    q = eq.quantize(cnn, r, digits[0])
    assert_round_trip(q, tmp_path / "m", digits[1])
    stored = safetensors.numpy.load_file(str(tmp_path / "m" / artifact.TENSORS))  # any safetensors reader works
    doc = json.loads((tmp_path / "m" / artifact.PROGRAM).read_text())
    n_weights = 0
    for ins, d in zip(q.program.instrs, doc["instrs"]):
        for e in d["arrays"]:
            if e["key"] == "weight":
                w = ins.arrays["weight"]
                assert e["packed_bits"] == 4 and stored[e["tensor"]].dtype == np.uint8
                assert stored[e["tensor"]].size == packing.packed_nbytes(w.size, 4)  # two per byte
                n_weights += 1
            else:
                np.testing.assert_array_equal(stored[e["tensor"]], ins.arrays[e["key"]])
    assert n_weights == sum("weight" in i.arrays for i in q.program.instrs) > 0


# -- determinism --------------------------------------------------------------------------------
def test_same_inputs_give_byte_identical_artifacts(cnn, digits, tmp_path):
    calib = digits[0]
    r = eq.RECIPES["w4a4-aciq"] if "w4a4-aciq" in eq.RECIPES else "w8a8-pc"
    q1, q2 = eq.quantize(cnn, r, calib), eq.quantize(cnn, r, calib)
    q1.save(tmp_path / "a")
    q2.save(tmp_path / "b")
    q1.save(tmp_path / "c")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(artifact.FILES + (artifact.MANIFEST,))
    for name in files:
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name


def _budget(r: eq.Recipe, iterations: int) -> eq.Recipe:
    return dataclasses.replace(r, options=tuple((k, iterations if k == "iterations" else v) for k, v in r.options))


def _saved_bytes(q, root: Path) -> dict[str, bytes]:
    q.save(root)
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


# low-bit PTQ (ACIQ + bit allocation + bias correction, ternary, binary) and the seeded optimisers:
# BRECQ with QDrop's random dropping and AdaRound's sampled batches
DETERMINISM_RECIPES = ["w8a8-pc", "w2a4-aciq", "w2a8-ternary", "w1a1-xnor", "w4a8-adaround", "w2a4-brecq-qdrop"]


@pytest.mark.parametrize("name", DETERMINISM_RECIPES)
def test_determinism_across_recipes(name, cnn, digits, tmp_path):
    """Quantizing twice from the same inputs (fresh model copies, seeds reset between) gives the same bytes."""
    if name not in eq.RECIPES:
        pytest.skip(f"{name} is not registered in this build")
    calib = digits[0]
    r = _budget(eq.RECIPES[name], 8)
    runs = []
    for i in range(2):
        torch.manual_seed(1000 + i)  # global RNG state must not matter: the recipe's seed does
        np.random.seed(1000 + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = eq.quantize(copy.deepcopy(cnn), r, calib)
        runs.append(_saved_bytes(q, tmp_path / f"run{i}"))
    assert runs[0].keys() == runs[1].keys()
    for f in runs[0]:
        assert runs[0][f] == runs[1][f], f"{name}: {f} differs between two identical quantizations"


def test_determinism_of_qat_finetune(cnn, digits, tmp_path):
    """QAT fine-tuning with the same seed gives byte-identical artifacts; another seed changes them."""
    name = "w2a2-qat"
    if name not in eq.RECIPES:
        pytest.skip("no QAT recipes in this build")
    calib = digits[0]
    xs, ys = next(iter(eq.data.digits_train(batch_size=192, shuffle=False)))
    # shuffled without its own generator: the order comes from torch's global RNG, which finetune seeds
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=32, shuffle=True)
    out = {}
    for tag, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.manual_seed(len(tag) * 7 + ord(tag))  # global state differs per run on purpose
        q = eq.qat.finetune(copy.deepcopy(cnn), name, train, calib, epochs=1, lr=1e-3, progress=False, seed=seed)
        out[tag] = _saved_bytes(q, tmp_path / tag)
        if tag == "a":
            x = digits[1]
            assert_round_trip(q, tmp_path / "rt", x)  # a QAT-converted program round-trips too
    assert out["a"] == out["b"]
    assert out["a"][artifact.TENSORS] != out["c"][artifact.TENSORS]  # the seed really is used


def test_determinism_across_processes(tmp_path):
    """Another interpreter with another hash seed writes the same bytes (no set/dict-order or id leaks)."""
    script = tmp_path / "save.py"
    script.write_text(
        "import sys, dataclasses, warnings, torch, edgequant as eq\n"
        "warnings.simplefilter('ignore')\n"
        "torch.manual_seed(0)\n"
        "calib, _ = eq.data.digits(batch_size=16, calib_size=32)\n"
        "for n in sys.argv[2:]:\n"
        "    r = eq.RECIPES[n]\n"
        "    r = dataclasses.replace(r, options=tuple((k, 8 if k == 'iterations' else v) for k, v in r.options))\n"
        "    eq.quantize(eq.models.digits_cnn(pretrained=True), r, calib).save(f'{sys.argv[1]}/{n}')\n")
    names = [n for n in ("w2a4-brecq-qdrop",) if n in eq.RECIPES] or ["w8a8-pc"]  # seeded random dropping
    trees = []
    for hash_seed in ("1", "12345"):
        out = tmp_path / f"h{hash_seed}"
        out.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, str(script), str(out), *names], check=True, env=env, capture_output=True)
        trees.append({str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert len(trees[0]) == len(names) * (len(artifact.FILES) + 1) and trees[0] == trees[1]


# -- validation on load -------------------------------------------------------------------------
def reseal(root: Path) -> None:
    """Recompute every checksum, as a writer with a bug (or a hand edit) would leave the folder."""
    m = json.loads((root / artifact.MANIFEST).read_text())
    for name in artifact.FILES:
        data = (root / name).read_bytes()
        m["files"][name] = {"sha256": artifact._sha256(data), "bytes": len(data)}
    m.pop("manifest_sha256")
    m["manifest_sha256"] = artifact._sha256(artifact._json_bytes(m))
    (root / artifact.MANIFEST).write_bytes(artifact._json_bytes(m))


def edit_program(root: Path, fn) -> None:
    doc = json.loads((root / artifact.PROGRAM).read_text())
    fn(doc)
    (root / artifact.PROGRAM).write_text(json.dumps(doc))
    reseal(root)


def first_tensor_with_qparams(doc: dict) -> dict:
    return next(t for t in doc["tensors"] if t["qparams"] is not None)


def set_scale(doc, v):
    first_tensor_with_qparams(doc)["qparams"]["scale"]["data"] = [v]


def set_zero_point(doc, v):
    first_tensor_with_qparams(doc)["qparams"]["zero_point"]["data"] = [v]


def set_bits(doc, v):
    first_tensor_with_qparams(doc)["qparams"]["bits"] = v


def set_op(doc, v):
    doc["instrs"][1]["op"] = v


def use_before_define(doc, _):
    doc["instrs"][1]["inputs"] = [doc["instrs"][3]["output"]]


def set_weight_shape(doc, _):
    e = next(e for e in doc["instrs"][1]["arrays"] if e["key"] == "weight")
    e["shape"] = [e["shape"][0] // 2, e["shape"][1] * 2] + e["shape"][2:]


def set_dtype(doc, _):
    e = next(e for e in doc["instrs"][1]["arrays"] if e["key"] == "bias")
    e["dtype"] = "int16"


def set_weight_bits(doc, _):
    doc["instrs"][1]["attrs"]["weight_bits"] = 4


def set_schema_version(doc, _):
    doc["version"] = 99


@pytest.mark.parametrize("edit, value, field", [
    (set_scale, 0.0, r"tensors\[\d+\]\.qparams\.scale"),
    (set_scale, 1e39, r"tensors\[\d+\]\.qparams\.scale"),  # inf as float32
    (set_zero_point, 300, r"tensors\[\d+\]\.qparams\.zero_point"),
    (set_bits, 12, r"tensors\[\d+\]\.qparams\.bits"),
    (set_op, "conv9d", r"instrs\[1\]\.op"),
    (use_before_define, None, r"instrs\[1\]\.inputs"),
    (set_weight_shape, None, r"instrs\[1\]\.arrays\.weight"),
    (set_dtype, None, r"instrs\[1\]\.arrays\.bias"),
    (set_weight_bits, None, r"instrs\[1\]\.arrays\.weight\.(packed_bits|sha256)"),
    (set_schema_version, None, r"program\.json: version"),
])
def test_invalid_program_is_rejected_naming_file_and_field(resnet_q, tmp_path, edit, value, field):
    root = tmp_path / "m"
    resnet_q.save(root)
    edit_program(root, lambda d: edit(d, value))
    with pytest.raises(ArtifactError, match=field) as e:
        eq.load(root)
    assert "program.json" in str(e.value) and str(root) in str(e.value)


def test_checksum_and_format_errors(resnet_q, tmp_path):
    root = tmp_path / "m"
    resnet_q.save(root)
    t = root / artifact.TENSORS
    data = bytearray(t.read_bytes())
    data[-3] ^= 0x10
    t.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"tensors\.safetensors: SHA-256 does not match"):
        eq.load(root)
    t.write_bytes(bytes(data[:100]))
    with pytest.raises(ArtifactError, match=r"tensors\.safetensors: has 100 bytes"):
        eq.load(root)
    t.unlink()
    with pytest.raises(ArtifactError, match=r"tensors\.safetensors: missing"):
        eq.load(root)
    resnet_q.save(root)
    m = json.loads((root / artifact.MANIFEST).read_text())
    m["format_version"] = artifact.FORMAT_VERSION + 1
    m.pop("manifest_sha256")
    m["manifest_sha256"] = artifact._sha256(artifact._json_bytes(m))
    (root / artifact.MANIFEST).write_bytes(artifact._json_bytes(m))
    with pytest.raises(ArtifactError, match="newer than this edgequant reads.*upgrade edgequant"):
        eq.load(root)
    m["format_version"] = artifact.FORMAT_VERSION
    m["edgequant_version"] = "0.0.1"  # hand edit without re-hashing the manifest
    (root / artifact.MANIFEST).write_bytes(artifact._json_bytes(m))
    with pytest.raises(ArtifactError, match="manifest_sha256"):
        eq.load(root)
    with pytest.raises(ArtifactError, match="does not exist"):
        eq.load(tmp_path / "nowhere")


def test_swapped_tensors_are_detected_even_when_resealed(resnet_q, tmp_path):
    root = tmp_path / "m"
    resnet_q.save(root)
    t = artifact.read_safetensors((root / artifact.TENSORS).read_bytes())
    a, b = "instrs.2.m0", "instrs.3.m0"  # same shape and dtype (16 channels each)
    assert t[a].shape == t[b].shape and not np.array_equal(t[a], t[b])
    t[a], t[b] = t[b], t[a]
    (root / artifact.TENSORS).write_bytes(artifact.safetensors_bytes(t))
    reseal(root)
    with pytest.raises(ArtifactError, match=r"instrs\[2\]\.arrays\.m0\.sha256"):
        eq.load(root)


def test_golden_rerun_catches_a_changed_kernel(resnet_q, tmp_path, monkeypatch):
    """An artifact loaded by an edgequant whose kernels compute differently fails, naming the op."""
    root = tmp_path / "m"
    resnet_q.save(root)
    add = RUN["add"]
    monkeypatch.setitem(RUN, "add", lambda ins, xs, ctx: np.clip(add(ins, xs, ctx).astype(np.int16) + 1, -128, 127).astype(np.int8))
    with pytest.raises(ArtifactError, match=r"instruction \d+ \(add from node 'add'\) computes differently"):
        eq.load(root)
    assert eq.load(root, verify=False).program is not None  # structure checks alone still pass


# -- atomic writes -------------------------------------------------------------------------------
def test_interrupted_save_leaves_no_half_written_model(resnet_q, cnn, digits, tmp_path, monkeypatch):
    root = tmp_path / "m"
    q_other = eq.quantize(cnn, "w8a8", digits[0])
    resnet_q.save(root)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    calls = []

    def dying_write(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        real_write(path, data)

    real_write = artifact._write_file
    monkeypatch.setattr(artifact, "_write_file", dying_write)
    with pytest.raises(KeyboardInterrupt):
        q_other.save(root)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before  # the old artifact, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left behind
    assert eq.load(root).recipe.name == "w8a8-pc"
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        q_other.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    q_other.save(root)  # replacing a complete artifact
    assert eq.load(root).recipe.name == "w8a8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_refuses_to_clobber_other_things(resnet_q, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not an edgequant artifact"):
        resnet_q.save(tmp_path / "notes")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is a file"):
        resnet_q.save(tmp_path / "file")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_safetensors_reader_rejects_malformed_headers():
    good = artifact.safetensors_bytes({"a": np.arange(6, dtype=np.int32).reshape(2, 3)})
    assert np.array_equal(safetensors.numpy.load(good)["a"], artifact.read_safetensors(good)["a"])
    hdr_len = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + hdr_len])
    for bad_entry, msg in [({"dtype": "I32", "shape": [2, 4], "data_offsets": [0, 24]}, "needs 32 bytes"),
                           ({"dtype": "Q7", "shape": [2, 3], "data_offsets": [0, 24]}, "unknown dtype"),
                           ({"dtype": "I32", "shape": [2, 3], "data_offsets": [0, 999]}, "invalid offsets")]:
        h = json.dumps({**header, "a": bad_entry}).encode()
        with pytest.raises(ArtifactError, match=msg):
            artifact.read_safetensors(len(h).to_bytes(8, "little") + h + good[8 + hdr_len :])
    with pytest.raises(ArtifactError, match="trailing bytes"):
        artifact.read_safetensors(good + b"\0" * 8)
