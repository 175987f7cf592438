"""The artifact: a quantized model saved as one folder that ``load`` reads back bit-identically.

Why a folder of plain files: a user can inspect it (``cat model/manifest.json``), any
safetensors reader can open the tensors, and every file carries its own SHA-256 in the manifest.

    model/                    (the path given to ``QuantizedModel.save``)
      manifest.json           format + version, edgequant version, recipe name, calibration summary,
                              model summary, golden check, SHA-256 and size of every other file,
                              and ``manifest_sha256`` over the manifest itself
      program.json            the integer program (versioned schema): tensors (dtype, shape,
                              qparams), instructions (op, inputs, output, attrs, array references), meta
      recipe.json             ``Recipe.to_dict()``
      tensors.safetensors     instruction arrays (sub-byte and int8 weights *packed* with
                              ``packing.pack`` at ``attrs["weight_bits"]``, or, when bits were
                              allocated per channel, ``packing.pack_rows`` at ``attrs["channel_bits"]``;
                              int32 bias, float scales) and the golden input/outputs

Every stored instruction array is what ``size_bytes`` counts, byte for byte: the payload of the
instruction arrays, less the requantization multipliers/shifts (derived at load, not counted),
plus 8 bytes per activation qparams, equals ``size_bytes``. Format versions: ``files.py``; version 1
artifacts (bit-allocated weights packed whole at their widest channel) still load.

Attrs and meta use ``program.to_jsonable`` (tuples, numpy scalars, inf are tagged), so the loaded
program is the same Python data and ``run`` is bit-identical. JSON keys are sorted and nothing
time-dependent is written: the same model gives byte-identical files.

Integrity, in layers (``load`` raises ``ArtifactError`` naming the file and the field):
1. the manifest's SHA-256 of every file and of itself: any corruption of any byte;
2. the schema (``schema.py``): versions, dtypes, shapes against the program's tensors, qparams
   (scale finite and > 0, zero point in range, 1..8 bits), ops known to ``kernels.RUN``, inputs
   defined before use, and a SHA-256 of every array's values in program.json, so tensors that
   were swapped or altered are caught even if someone re-hashed the files;
3. the golden check (``golden.py``): ``save`` runs the program on a small seeded random input
   (inside the calibrated input range) in every rounding mode and stores the input, the outputs
   and a digest of every instruction's output; ``load`` reruns it and requires the same values
   (bit-exact; programs with float ``*_f`` kernels compare outputs to 1e-4 relative, since float
   convolution may round differently on another CPU). This catches a program edited consistently
   and an edgequant whose kernels compute differently from the one that saved the model.

The prepared float graph (``QuantizedModel.graph``) is not saved: the artifact is what ships to a
device, the float weights would make it 4x larger, and the user's own float model remains the source
for re-quantizing. A loaded model has ``graph = None``.

Modules: ``files`` (bytes, hashes, safetensors), ``schema`` (program.json), ``golden``; this
file writes and reads the folder. Writes are atomic: files go to a hidden temp folder beside the target, are fsynced, and the folder is
renamed into place; an existing artifact is moved aside only once the new one is complete.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ArtifactError, EdgequantError
from ..program import to_jsonable
from ..recipes import Recipe
from .files import (FILES, FORMAT, FORMAT_VERSION, MANIFEST, PROGRAM, RECIPE, TENSORS, _Fail, _json_bytes, _need,
                    _parse_json, _sha256, read_safetensors, safetensors_bytes)
from .golden import GOLDEN_RTOL, _exact, _golden_check, _golden_input, _golden_run
from .schema import program_from_files, program_to_files

SUFFIX = ".edgequant"  # conventional folder suffix (the CLI and the sweep name artifacts model-<recipe>.edgequant)
__all__ = ["save", "load", "read_manifest", "artifact_files", "read_safetensors", "safetensors_bytes", "FILES", "MANIFEST",
           "PROGRAM", "RECIPE", "TENSORS", "FORMAT", "FORMAT_VERSION", "SUFFIX"]


def artifact_files(q) -> dict[str, bytes]:
    """Every file of ``q``'s artifact as bytes (deterministic); ``save`` writes exactly these."""
    from .. import __version__

    program, recipe = q.program, q.recipe
    doc, tensors = program_to_files(program)
    x = _golden_input(program)
    exact = _exact(program)
    outs, digests = _golden_run(program, x)
    one = len(program.inputs) == 1  # one input keeps the single "golden.input" tensor of formats 1-2
    stored = {name: "golden.input" if one else f"golden.input.{name}" for name in program.inputs}
    golden = {"input": stored[program.input] if one else stored, "outputs": {}, "compare": "exact" if exact else "rtol",
              "rtol": None if exact else GOLDEN_RTOL, "digests": digests if exact else None}
    for name, t in stored.items():
        tensors[t] = x[name]
    for mode, y in outs.items():
        tensors[f"golden.{mode}"] = y
        golden["outputs"][mode] = f"golden.{mode}"
    try:
        recipe_doc = recipe.to_dict()
        files = {PROGRAM: _json_bytes(doc), RECIPE: _json_bytes(recipe_doc), TENSORS: safetensors_bytes(tensors)}
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"cannot save recipe {recipe.name!r}: {e}; recipe options must be JSON values") from e
    out_name = program.output
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "edgequant_version": __version__,
        "recipe": recipe.name,
        "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in files.items()},
        "model": {"input": program.input, "input_shape": list(program.input_shape),
                  "input_dtype": program.tensors[program.input].dtype,
                  "inputs": [{"name": n, "shape": list(program.tensors[n].shape), "dtype": program.tensors[n].dtype}
                             for n in program.inputs],
                  "output_shape": list(program.tensors[out_name].shape) if out_name in program.tensors else None,
                  "instructions": len(program.instrs), "size_bytes": int(q.size_bytes),
                  "float_size_bytes": None if q.float_size_bytes is None else int(q.float_size_bytes),
                  "float_graph_saved": False},
        "calibration": to_jsonable(program.meta.get("calibration")),
        "golden": golden,
    }
    manifest["manifest_sha256"] = _sha256(_json_bytes(manifest))
    files[MANIFEST] = _json_bytes(manifest)
    return files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save(q, path) -> Path:
    """Write ``q`` as an artifact folder at ``path`` atomically (see module docstring)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path} exists and is a file; an artifact is a folder -- choose another path or remove it")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
        raise ArtifactError(f"{path} is a non-empty folder that is not an edgequant artifact; refusing to replace it")
    files = artifact_files(q)  # everything is computed before the disk is touched
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    old: Path | None = None
    try:
        for name in sorted(files):
            _write_file(tmp / name, files[name])
        _fsync_dir(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
            os.rename(path, old / "artifact")
        os.rename(tmp, path)
        _fsync_dir(parent)
    except BaseException:
        if old is not None and not path.exists():
            os.rename(old / "artifact", path)  # put the previous artifact back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------------
# load
def _read_checked(root: Path, fail: _Fail) -> tuple[dict, dict[str, bytes]]:
    """The manifest and the bytes of every listed file, after format and checksum checks."""
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise ArtifactError(f"artifact {root} {what}; pass the folder written by QuantizedModel.save")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise fail(MANIFEST, "", "missing")
    manifest = _parse_json(mpath.read_bytes(), MANIFEST, fail)
    if manifest.get("format") != FORMAT:
        raise fail(MANIFEST, "format", f"expected {FORMAT!r}, got {manifest.get('format')!r}")
    ver = manifest.get("format_version")
    if not isinstance(ver, int) or isinstance(ver, bool) or ver < 1:
        raise fail(MANIFEST, "format_version", f"invalid version {ver!r}")
    if ver > FORMAT_VERSION:
        raise ArtifactError(f"artifact {root}: {MANIFEST}: format_version {ver} is newer than this edgequant reads "
                            f"({FORMAT_VERSION}); upgrade edgequant (written by {manifest.get('edgequant_version')!r})")
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if manifest.get("manifest_sha256") != _sha256(_json_bytes(body)):
        raise fail(MANIFEST, "manifest_sha256", "does not match the manifest's content")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or set(listed) != set(FILES):
        raise fail(MANIFEST, "files", f"must list exactly {sorted(FILES)}, got {sorted(listed) if isinstance(listed, dict) else listed!r}")
    data = {}
    for name in FILES:
        entry = listed[name]
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
            raise fail(MANIFEST, f"files.{name}", "needs 'sha256' and 'bytes'")
        fpath = root / name
        if not fpath.is_file():
            raise fail(name, "", "missing")
        raw = fpath.read_bytes()
        if len(raw) != entry["bytes"]:
            raise fail(name, "", f"has {len(raw)} bytes, the manifest says {entry['bytes']} (truncated or replaced)")
        if _sha256(raw) != entry["sha256"]:
            raise fail(name, "", "SHA-256 does not match the manifest")
        data[name] = raw
    return manifest, data


def read_manifest(path) -> dict:
    """The artifact's manifest after its format and checksum checks (for ``inspect``)."""
    root = Path(path)
    return _read_checked(root, _Fail(root))[0]


def load(path, verify: bool = True):
    """Read an artifact written by ``QuantizedModel.save`` and validate everything.

    Raises ``ArtifactError`` naming the file and field on any inconsistency. ``verify=False``
    skips the golden rerun (format, checksum and structure checks still apply).
    """
    from ..quantized import QuantizedModel, program_size_bytes

    root = Path(path)
    fail = _Fail(root)
    manifest, data = _read_checked(root, fail)
    tensors = read_safetensors(data[TENSORS], TENSORS, fail)
    recipe_doc = _parse_json(data[RECIPE], RECIPE, fail)
    try:
        recipe = Recipe.from_dict(recipe_doc)
    except EdgequantError as e:
        raise fail(RECIPE, "", str(e)) from None
    except (TypeError, ValueError, AttributeError) as e:
        raise fail(RECIPE, "", f"malformed recipe ({e})") from None
    _need(manifest.get("recipe") == recipe.name, fail, "recipe", f"names {manifest.get('recipe')!r}, recipe.json {recipe.name!r}",
          file=MANIFEST)
    program = program_from_files(_parse_json(data[PROGRAM], PROGRAM, fail), tensors, fail, manifest["format_version"])
    if "recipe" in program.meta:  # the exact recipe (tuples kept); recipe.json is its readable copy
        _need(_plain(program.meta["recipe"]) == recipe_doc, fail, "meta.recipe", f"does not match {RECIPE}")
        try:
            recipe = Recipe.from_dict(program.meta["recipe"])
        except (EdgequantError, TypeError, ValueError, AttributeError) as e:
            raise fail(PROGRAM, "meta.recipe", f"malformed recipe ({e})") from None
    model = manifest.get("model")
    _need(isinstance(model, dict) and model.get("size_bytes") == program_size_bytes(program), fail, "model.size_bytes",
          "does not match the program", file=MANIFEST)
    fsb = model.get("float_size_bytes")
    _need(fsb is None or (isinstance(fsb, int) and fsb >= 0), fail, "model.float_size_bytes", f"invalid {fsb!r}", file=MANIFEST)
    if verify:
        _golden_check(program, manifest, tensors, fail)
    return QuantizedModel(program, recipe, graph=None, float_size_bytes=fsb)


def _plain(v):
    """Tuples -> lists, recursively: how a value looks after a plain JSON round trip."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v
