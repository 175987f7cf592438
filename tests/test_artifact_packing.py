"""Bit-allocated weights are stored per channel: the artifact holds exactly the bytes ``size_bytes`` counts.

The relation tested (artifact format 2): for every instruction array stored in
``tensors.safetensors`` except the requantization multipliers/shifts (derived at load, not
counted), the payload bytes, plus 8 bytes per activation qparams, sum to ``q.size_bytes``; for a
bit-allocated weight the stored tensor is ``attrs.packed_weight_bytes`` bytes
(``C + sum_c ceil(row_size * bits_c / 8)``: one width byte per channel, then each row at its width).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy
import torch

import edgequant as eq
from edgequant import artifact, packing
from edgequant.errors import ArtifactError

RECIPES = ("w2a4-aciq", "w4a4-aciq")
DERIVED = ("m0", "shift", "multiplier")
MODES = ("gemmlowp", "onnxruntime")


@pytest.fixture(scope="module")
def digits():
    calib, test = eq.data.digits(batch_size=64, calib_size=128)
    return calib, next(iter(test))[0][:32].numpy()


@pytest.fixture(scope="module", params=RECIPES)
def saved(request, digits, tmp_path_factory):
    torch.manual_seed(0)
    q = eq.quantize(eq.models.digits_cnn(pretrained=True), request.param, digits[0])
    root = tmp_path_factory.mktemp(request.param) / "m"
    q.save(root)
    return q, root


def _allocated(q):
    return [(k, ins) for k, ins in enumerate(q.program.instrs) if "channel_bits" in ins.attrs]


def _files(root):
    return {p.name: p.read_bytes() for p in root.iterdir()}


def _write_resealed(root, files, format_version=None):
    """Write ``files`` and a manifest whose checksums match them (a hand edit that re-hashed everything)."""
    m = json.loads(files[artifact.MANIFEST])
    if format_version is not None:
        m["format_version"] = format_version
    for name in artifact.FILES:
        m["files"][name] = {"sha256": artifact._sha256(files[name]), "bytes": len(files[name])}
        (root / name).write_bytes(files[name])
    m.pop("manifest_sha256")
    m["manifest_sha256"] = artifact._sha256(artifact._json_bytes(m))
    (root / artifact.MANIFEST).write_bytes(artifact._json_bytes(m))


def _edit(root, tmp_path, program_edit=None, tensors_edit=None):
    """Copy of the artifact at ``root`` with program.json / the tensors edited, checksums resealed."""
    files = _files(root)
    doc = json.loads(files[artifact.PROGRAM])
    tensors = artifact.read_safetensors(files[artifact.TENSORS])
    if program_edit:
        program_edit(doc)
    if tensors_edit:
        tensors_edit(doc, tensors)
    files[artifact.PROGRAM] = artifact._json_bytes(doc)
    files[artifact.TENSORS] = artifact.safetensors_bytes(tensors)
    out = tmp_path / "edited"
    out.mkdir()
    _write_resealed(out, files)
    return out


def _weight_entry(doc, k):
    return next(e for e in doc["instrs"][k]["arrays"] if e["key"] == "weight")


def _mixed(q):
    """Index of an instruction whose channels have different widths (the case the layout is for)."""
    return next(k for k, ins in _allocated(q) if len(set(ins.attrs["channel_bits"])) > 1)


# -- the stored bytes are the counted bytes ------------------------------------------------------
def test_stored_bytes_are_the_bytes_size_bytes_counts(saved):
    q, root = saved
    stored = safetensors.numpy.load_file(str(root / artifact.TENSORS))  # any safetensors reader opens it
    counted = sum(t.nbytes for n, t in stored.items() if n.startswith("instrs.") and n.rsplit(".", 1)[1] not in DERIVED)
    n_qp = sum(1 for t in q.program.tensors.values() if t.qparams is not None)
    assert counted + 8 * n_qp == q.size_bytes
    assert _allocated(q) and _mixed(q) is not None
    per_channel = whole = 0
    for k, ins in _allocated(q):
        w, cb = ins.arrays["weight"], ins.attrs["channel_bits"]
        blob = stored[f"instrs.{k}.weight"]
        assert blob.dtype == np.uint8 and blob.ndim == 1
        assert blob.size == ins.attrs["packed_weight_bytes"] == packing.packed_rows_nbytes(w[0].size, cb)
        per_channel += blob.size
        whole += packing.packed_nbytes(w.size, ins.attrs["weight_bits"])  # format 1: all at the widest channel
    assert per_channel < whole


def test_layout_reads_back_with_plain_unpack(saved):
    """The documented layout, decoded independently: C width bytes, then each row at its width."""
    q, root = saved
    stored = safetensors.numpy.load_file(str(root / artifact.TENSORS))
    doc = json.loads((root / artifact.PROGRAM).read_text())
    for k, ins in _allocated(q):
        w, cb = ins.arrays["weight"], ins.attrs["channel_bits"]
        blob = stored[f"instrs.{k}.weight"]
        assert _weight_entry(doc, k)["packed_channel_bits"] == cb and "packed_bits" not in _weight_entry(doc, k)
        assert blob[: len(cb)].tolist() == cb
        pos = len(cb)
        for c, bits in enumerate(cb):
            n = packing.packed_nbytes(w[c].size, bits)
            np.testing.assert_array_equal(packing.unpack(blob[pos : pos + n], bits, True, w[c].shape), w[c])
            lo, hi = packing.value_range(bits, True)
            assert lo <= w[c].min() and w[c].max() <= hi
            pos += n
        assert pos == blob.size


def test_round_trip_is_bit_identical(saved, digits, tmp_path):
    q, root = saved
    loaded = eq.load(root)
    assert loaded.size_bytes == q.size_bytes
    for a, b in zip(q.program.instrs, loaded.program.instrs):
        assert a.attrs == b.attrs and a.arrays.keys() == b.arrays.keys()
        for key in a.arrays:
            assert a.arrays[key].dtype == b.arrays[key].dtype
            np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
    x = digits[1]
    for mode in MODES:
        np.testing.assert_array_equal(q.run(x, rounding=mode, return_int=True), loaded.run(x, rounding=mode, return_int=True))
    loaded.save(tmp_path / "again")
    assert _files(tmp_path / "again") == _files(root)


# -- corrupted widths fail clearly ---------------------------------------------------------------
def _set_attr_width(q, k):
    cb = q.program.instrs[k].attrs["channel_bits"]
    c = next(i for i, b in enumerate(cb) if b < 8)

    def edit(doc):
        doc["instrs"][k]["attrs"]["channel_bits"][c] += 1
    return edit


def _set_both_widths(value):
    def make(q, k):
        def edit(doc):
            doc["instrs"][k]["attrs"]["channel_bits"][0] = value
            _weight_entry(doc, k)["packed_channel_bits"][0] = value
        return edit
    return make


def _swap_both_widths(q, k):
    """Two channels of different widths swapped in program.json: the byte count still fits."""
    cb = q.program.instrs[k].attrs["channel_bits"]
    i, j = 0, next(c for c, b in enumerate(cb) if b != cb[0])

    def edit(doc):
        for lst in (doc["instrs"][k]["attrs"]["channel_bits"], _weight_entry(doc, k)["packed_channel_bits"]):
            lst[i], lst[j] = lst[j], lst[i]
    return edit


def _whole_tensor_layout(q, k):
    """The format-1 layout inside a format-2 artifact."""
    def edit(doc):
        e = _weight_entry(doc, k)
        del e["packed_channel_bits"]
        e["packed_bits"] = doc["instrs"][k]["attrs"]["weight_bits"]
    return edit


def _set_packed_bytes(q, k):
    def edit(doc):
        doc["instrs"][k]["attrs"]["packed_weight_bytes"] += 1
    return edit


@pytest.mark.parametrize("make, field", [
    (_set_attr_width, r"instrs\[\d+\]\.arrays\.weight\.packed_channel_bits: does not match attrs\.channel_bits"),
    (_set_both_widths(9), r"instrs\[\d+\]\.arrays\.weight\.packed_channel_bits: widths must be integers 1\.\.8"),
    (_set_both_widths(0), r"instrs\[\d+\]\.arrays\.weight\.packed_channel_bits: widths must be integers 1\.\.8"),
    (_swap_both_widths, r"tensors\.safetensors: instrs\.\d+\.weight: per-channel widths in the packed header differ"),
    (_whole_tensor_layout, r"instrs\[\d+\]\.arrays\.weight\.packed_bits: a bit-allocated weight .* must be packed per channel"),
    (_set_packed_bytes, r"instrs\[\d+\]\.attrs\.packed_weight_bytes: \d+ does not match the \d+ bytes stored"),
])
def test_corrupted_widths_in_program_json_are_rejected(saved, tmp_path, make, field):
    q, root = saved
    out = _edit(root, tmp_path, program_edit=make(q, _mixed(q)))
    with pytest.raises(ArtifactError, match=field) as e:
        eq.load(out, verify=False)
    assert str(out) in str(e.value)


def _header_byte(value_of):
    def make(q, k):
        def edit(doc, tensors):
            blob = tensors[f"instrs.{k}.weight"].copy()
            blob[0] = value_of(blob)
            tensors[f"instrs.{k}.weight"] = blob
        return edit
    return make


def _swap_header_bytes(q, k):
    cb = q.program.instrs[k].attrs["channel_bits"]
    j = next(c for c, b in enumerate(cb) if b != cb[0])

    def edit(doc, tensors):
        blob = tensors[f"instrs.{k}.weight"].copy()
        blob[0], blob[j] = blob[j], blob[0]
        tensors[f"instrs.{k}.weight"] = blob
    return edit


def _truncate(q, k):
    def edit(doc, tensors):
        tensors[f"instrs.{k}.weight"] = tensors[f"instrs.{k}.weight"][:-1].copy()
        doc["instrs"][k]["attrs"]["packed_weight_bytes"] -= 1  # consistent, so the unpacker must see it
    return edit


@pytest.mark.parametrize("make, match", [
    (_header_byte(lambda b: 0), r"tensors\.safetensors: instrs\.\d+\.weight: channel 0 has width 0 .*widths are 1\.\.8"),
    (_header_byte(lambda b: 9), r"tensors\.safetensors: instrs\.\d+\.weight: channel 0 has width 9 .*widths are 1\.\.8"),
    (_header_byte(lambda b: 8 if b[0] < 8 else 1), r"tensors\.safetensors: instrs\.\d+\.weight: packed buffer has \d+ bytes but"),
    (_swap_header_bytes, r"tensors\.safetensors: instrs\.\d+\.weight: per-channel widths in the packed header differ"),
    (_truncate, r"tensors\.safetensors: instrs\.\d+\.weight: packed buffer has \d+ bytes but"),
])
def test_corrupted_widths_in_the_tensor_are_rejected(saved, tmp_path, make, match):
    q, root = saved
    out = _edit(root, tmp_path, tensors_edit=make(q, _mixed(q)))
    with pytest.raises(ArtifactError, match=match) as e:
        eq.load(out, verify=False)
    assert str(out) in str(e.value)


# -- format 1 still loads --------------------------------------------------------------------------
def to_format_1(root, out):
    """Rewrite a format-2 artifact as the format-1 writer wrote it: every bit-allocated weight packed
    whole at ``attrs.weight_bits`` (entry ``packed_bits``), versions 1. Byte-identical to a real
    format-1 artifact of the same model (checked when format 2 was introduced)."""
    files = _files(root)
    doc = json.loads(files[artifact.PROGRAM])
    tensors = artifact.read_safetensors(files[artifact.TENSORS])
    doc["version"] = 1
    doc.pop("extra_inputs")  # format 3's key (keyword inputs)
    m = json.loads(files[artifact.MANIFEST])
    m["model"].pop("inputs")
    files[artifact.MANIFEST] = artifact._json_bytes(m)
    for d in doc["instrs"]:
        for e in d["arrays"]:
            if "packed_channel_bits" in e:
                vals, _ = packing.unpack_rows(tensors[e["tensor"]], tuple(e["shape"]))
                del e["packed_channel_bits"]
                e["packed_bits"] = d["attrs"]["weight_bits"]
                tensors[e["tensor"]] = packing.pack(vals, e["packed_bits"], signed=True)
    files[artifact.PROGRAM] = artifact._json_bytes(doc)
    files[artifact.TENSORS] = artifact.safetensors_bytes(tensors)
    out.mkdir()
    _write_resealed(out, files, format_version=1)
    return out


def test_format_1_artifacts_still_load_bit_identically(saved, digits, tmp_path):
    q, root = saved
    old = to_format_1(root, tmp_path / "v1")
    assert len((old / artifact.TENSORS).read_bytes()) > len((root / artifact.TENSORS).read_bytes())
    loaded = eq.load(old)  # golden check included
    assert loaded.size_bytes == q.size_bytes
    for mode in MODES:
        np.testing.assert_array_equal(q.run(digits[1], rounding=mode, return_int=True),
                                      loaded.run(digits[1], rounding=mode, return_int=True))
    loaded.save(tmp_path / "resaved")  # re-saving writes the current format
    assert _files(tmp_path / "resaved") == _files(root)


def test_program_version_must_match_the_manifest(saved, tmp_path):
    q, root = saved
    files = _files(root)
    out = tmp_path / "mixed"
    out.mkdir()
    _write_resealed(out, files, format_version=1)  # current program.json under a format-1 manifest
    with pytest.raises(ArtifactError, match=rf"program\.json: version: program schema version {artifact.FORMAT_VERSION} does not match "
                                            r"the manifest's format_version 1"):
        eq.load(out, verify=False)


# -- pack_rows / unpack_rows -------------------------------------------------------------------------
def test_pack_rows_round_trips_every_width():
    rng = np.random.default_rng(0)
    for shape in [(9, 1, 3, 3), (5, 7), (8, 3, 1, 1), (1, 13)]:
        widths = rng.integers(1, 9, shape[0])
        q = np.zeros(shape, np.int8)
        for c, b in enumerate(widths):
            lo, hi = packing.value_range(int(b), True)
            q[c] = rng.choice([-1, 1], shape[1:]) if b == 1 else rng.integers(lo, hi + 1, shape[1:])
        buf = packing.pack_rows(q, widths)
        assert buf.size == packing.packed_rows_nbytes(int(np.prod(shape[1:])), widths)
        back, w = packing.unpack_rows(buf, shape)
        np.testing.assert_array_equal(back, q)
        assert back.dtype == np.int8 and w.tolist() == widths.tolist()


def test_pack_rows_rejects_values_and_widths_that_do_not_fit():
    q = np.array([[1, -1, 1], [3, 0, -2]], np.int8)
    with pytest.raises(ArtifactError, match=r"channel 1 \(2-bit\): cannot pack value 3"):
        packing.pack_rows(q, [1, 2])
    with pytest.raises(ArtifactError, match="one width per output channel"):
        packing.pack_rows(q, [4])
    with pytest.raises(eq.errors.RecipeError, match="1..8"):
        packing.pack_rows(q, [4, 9])
    with pytest.raises(ArtifactError, match="fewer than the 2 per-channel width bytes"):
        packing.unpack_rows(np.array([4], np.uint8), (2, 3))
