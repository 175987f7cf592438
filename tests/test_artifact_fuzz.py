"""Fuzzing the artifact loader: corrupted or edited artifacts never load as a different model.

A seeded mutation loop (reproducible: every case prints its seed and mutation) over a saved
artifact. Two families:

* raw corruption -- truncate, flip bits, append, delete or edit a file, change a JSON field --
  must always raise ``ArtifactError`` (the SHA-256 checksums see every change);
* *resealed* edits -- the same changes, plus tensor swaps and bit flips inside tensor data,
  followed by rewriting the checksums and the manifest's own hash, as a buggy writer or a hand
  edit would leave it -- must raise ``ArtifactError`` or load a model whose output on real data
  is bit-identical to the original's in both rounding modes.

Any other exception type, a case slower than ``CASE_LIMIT_S`` (a hang), or a silently different
output fails the test.
"""
from __future__ import annotations

import copy
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import edgequant as eq
from edgequant import artifact
from edgequant.errors import ArtifactError

N_CASES = 600
CASE_LIMIT_S = 5.0  # CPU seconds per case (a busy loop); wall time may be 12x that on a loaded box (a deadlock)
MODES = ("gemmlowp", "onnxruntime")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    calib, test = eq.data.digits(batch_size=64, calib_size=128)
    q = eq.quantize(eq.models.resnet_digits(pretrained=True), "w8a8-pc", calib)
    root = tmp_path_factory.mktemp("fuzz") / "model"
    q.save(root)
    x = next(iter(test))[0][:16].numpy()
    want = {m: q.run(x, rounding=m) for m in MODES}
    files = {p.name: p.read_bytes() for p in root.iterdir()}
    return root, files, x, want


# -- mutations ---------------------------------------------------------------------------------
def _leaves(obj, path=()):
    """Every (path, value) in a JSON object, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))


def _mutate_value(rng: random.Random, v, names: list[str]):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return rng.choice([v + 1, v - 1, 0, -v, 2 * v + 1, -1, 127, 128, -129, 2**31])
    if isinstance(v, float):
        return rng.choice([v * 1.0001, -v, 0.0, v + 1.0, 1e30, 1e-30])
    if isinstance(v, str):
        return rng.choice(names + ["", "bogus", v + "_", "float64", "int4"])
    if isinstance(v, list):
        if v and rng.random() < 0.5:
            w = list(v)
            del w[rng.randrange(len(w))]
            return w
        return (v + [copy.deepcopy(v[0])]) if v else [0]
    if isinstance(v, dict):
        if v and rng.random() < 0.6:
            w = dict(v)
            del w[rng.choice(sorted(w))]
            return w
        return {**v, "extra": 1}
    return rng.choice([0, "x", [], {}])  # None


def edit_json(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    obj = json.loads(data)
    leaves = list(_leaves(obj))
    names = sorted({v for _, v in leaves if isinstance(v, str)})[:40]
    path, v = rng.choice(leaves[1:])
    new = v
    while new == v and type(new) is type(v):
        new = _mutate_value(rng, v, names)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = new
    return json.dumps(obj, sort_keys=True, indent=1).encode(), f"set {'/'.join(map(str, path))}: {v!r:.40} -> {new!r:.40}"


def swap_tensors(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Exchange the contents of two stored tensors of the same dtype and size."""
    t = artifact.read_safetensors(data)
    groups: dict = {}
    for k, a in t.items():
        groups.setdefault((a.dtype.str, a.nbytes), []).append(k)
    pairs = [g for g in groups.values() if len(g) >= 2]
    if not pairs:
        return data + b"\0", "append a byte (no swappable pair)"
    a, b = rng.sample(rng.choice(pairs), 2)
    t[a], t[b] = t[b].reshape(t[a].shape), t[a].reshape(t[b].shape)
    return artifact.safetensors_bytes(t), f"swap {a} <-> {b}"


def flip_bits(rng: random.Random, data: bytes, lo: int = 0) -> tuple[bytes, str]:
    b = bytearray(data)
    n = rng.choice([1, 1, 1, 2, 8])
    spots = [rng.randrange(lo, len(b)) for _ in range(n)]
    for pos in spots:
        b[pos] ^= 1 << rng.randrange(8)
    return bytes(b), f"flip {n} bit(s) at {spots[:3]}"


def tensor_data_start(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def mutate(rng: random.Random, files: dict[str, bytes]) -> tuple[dict[str, bytes], str, bool]:
    """(new files, description, resealed)."""
    files = dict(files)
    name = rng.choice(sorted(files))
    data = files[name]
    kind = rng.choice(["truncate", "flip", "append", "delete", "json", "json", "swap", "flip_data"])
    resealed = rng.random() < 0.6 and name != artifact.MANIFEST and kind != "delete"
    if kind == "truncate":
        n = rng.randrange(len(data))
        files[name], what = data[:n], f"truncate to {n} bytes"
    elif kind == "flip":
        files[name], what = flip_bits(rng, data)
    elif kind == "append":
        files[name], what = data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 9))), "append bytes"
    elif kind == "delete":
        del files[name]
        what = "delete"
    elif kind == "json" and name.endswith(".json"):
        files[name], what = edit_json(rng, data)
        if name == artifact.MANIFEST and rng.random() < 0.7:  # re-hash the manifest itself too
            m = json.loads(files[name])
            m.pop("manifest_sha256", None)
            m["manifest_sha256"] = artifact._sha256(artifact._json_bytes(m))
            files[name] = artifact._json_bytes(m)
            what += " (manifest re-hashed)"
            resealed = True
    else:
        name = artifact.TENSORS
        data = files[name]
        if kind == "swap":
            files[name], what = swap_tensors(rng, data)
        else:
            files[name], what = flip_bits(rng, data, tensor_data_start(data))
    if resealed and name in files and name != artifact.MANIFEST:
        m = json.loads(files[artifact.MANIFEST])
        m["files"][name] = {"sha256": artifact._sha256(files[name]), "bytes": len(files[name])}
        del m["manifest_sha256"]
        m["manifest_sha256"] = artifact._sha256(artifact._json_bytes(m))
        files[artifact.MANIFEST] = artifact._json_bytes(m)
        what += " (resealed)"
    return files, f"{name}: {kind}: {what}", resealed


# -- the test ----------------------------------------------------------------------------------
def test_fuzz_mutated_artifacts(saved, tmp_path):
    root, original, x, want = saved
    rng = random.Random(20240607)
    outcomes = {"error": 0, "identical": 0}
    t0 = time.perf_counter()
    for case in range(N_CASES):
        seed = rng.randrange(2**32)
        files, what, resealed = mutate(random.Random(seed), original)
        d = tmp_path / f"c{case % 4}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        for name, data in files.items():
            (d / name).write_bytes(data)
        start, cpu0 = time.perf_counter(), time.process_time()
        label = f"case {case} (seed {seed}): {what}"
        try:
            q = eq.load(d)
        except ArtifactError:
            outcomes["error"] += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{label}: raised {type(e).__name__}: {e}")
        else:
            assert resealed or files == original, f"{label}: corruption was not detected"
            for m in MODES:
                got = q.run(x, rounding=m)
                assert got.dtype == want[m].dtype and np.array_equal(got, want[m]), f"{label}: silently different output ({m})"
            outcomes["identical"] += 1
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - start
        assert cpu < CASE_LIMIT_S and wall < 12 * CASE_LIMIT_S, f"{label}: took {cpu:.1f} CPU-s, {wall:.1f} s wall"
    elapsed = time.perf_counter() - t0
    print(f"\n{N_CASES} mutated artifacts in {elapsed:.1f}s: {outcomes}")
    assert sum(outcomes.values()) == N_CASES
    assert outcomes["error"] > N_CASES // 2  # the mutations really do corrupt
