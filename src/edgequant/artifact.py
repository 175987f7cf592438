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
                              ``packing.pack`` at ``attrs["weight_bits"]``, int32 bias, float scales)
                              and the golden input/outputs

Attrs and meta use ``program.to_jsonable`` (tuples, numpy scalars, inf are tagged), so the loaded
program is the same Python data and ``run`` is bit-identical. JSON keys are sorted and nothing
time-dependent is written: the same model gives byte-identical files.

Golden check: ``save`` runs the program on a small seeded random input (inside the calibrated
input range) in every rounding mode and stores input and outputs; ``load`` reruns it and requires
the same outputs (bit-exact; programs with float ``*_f`` kernels to 1e-4 relative, since float
convolution may round differently on another CPU). This catches what checksums cannot: a file
edited *and* re-hashed, or an edgequant whose kernels changed since the model was saved.

The prepared float graph (``QuantizedModel.graph``) is not saved: the artifact is what ships to a
device, the float weights would make it 4x larger, and the user's own float model remains the source
for re-quantizing. A loaded model has ``graph = None``.

Writes are atomic: files go to a hidden temp folder beside the target, are fsynced, and the folder is
renamed into place; an existing artifact is moved aside only once the new one is complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import packing
from .errors import ArtifactError, EdgequantError
from .program import Instr, Program, TensorInfo, from_jsonable, to_jsonable
from .qmath import ROUNDING_MODES, QParams, qrange
from .recipes import Recipe

FORMAT = "edgequant-artifact"
FORMAT_VERSION = 1
PROGRAM_SCHEMA = "edgequant-program"
PROGRAM_VERSION = 1
MANIFEST = "manifest.json"
PROGRAM = "program.json"
RECIPE = "recipe.json"
TENSORS = "tensors.safetensors"
FILES = (PROGRAM, RECIPE, TENSORS)
GOLDEN_SEED = 0
GOLDEN_BATCH = 2
GOLDEN_RTOL = 1e-4  # float (``*_f``) programs only
MAX_INPUT_ELEMENTS = 1 << 27  # per sample; a larger input shape in a file is corruption, not a model
_FIX = "the artifact is corrupt or was edited; re-save it with QuantizedModel.save"

# safetensors dtype codes <-> NumPy (little-endian)
_ST_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32",
              "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16", "F32": "float32", "F64": "float64"}
_ST_CODES = {v: k for k, v in _ST_DTYPES.items()}


class _Fail:
    """Builds ArtifactErrors that name the artifact, the file and the field."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, file: str, field: str, problem: str) -> ArtifactError:
        where = f"{file}: {field}" if field else file
        return ArtifactError(f"artifact {self.root}: {where}: {problem}; {_FIX}")


# ---------------------------------------------------------------------------------------------
# bytes: canonical JSON, strict safetensors
def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode()


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_json(data: bytes, file: str, fail: _Fail) -> dict:
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise fail(file, "", f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise fail(file, "", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """A safetensors file (any reader opens it); names sorted, so the bytes are deterministic."""
    header: dict = {"__metadata__": {"format": "edgequant"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        code = _ST_CODES.get(arr.dtype.name)
        if code is None:
            raise ArtifactError(f"tensor {name!r} has dtype {arr.dtype}, which safetensors cannot store")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + b"".join(blobs)


def read_safetensors(data: bytes, file: str = TENSORS, fail: _Fail | None = None) -> dict[str, np.ndarray]:
    """Strict reader: header bounds, dtypes, shapes, and offsets that tile the data exactly."""
    fail = fail or _Fail(Path("."))
    if len(data) < 8:
        raise fail(file, "header", f"file has {len(data)} bytes, too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise fail(file, "header", f"header length {n} exceeds the file ({len(data)} bytes)")
    header = _parse_json(data[8 : 8 + n], file, fail)
    body = memoryview(data)[8 + n :]
    spans, out = [], {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise fail(file, name, "malformed tensor entry")
        dt, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dt not in _ST_DTYPES:
            raise fail(file, f"{name}.dtype", f"unknown dtype {dt!r}")
        if not _int_list(shape) or any(d < 0 for d in shape):
            raise fail(file, f"{name}.shape", f"invalid shape {shape!r}")
        if not _int_list(offs) or len(offs) != 2 or not 0 <= offs[0] <= offs[1] <= len(body):
            raise fail(file, f"{name}.data_offsets", f"invalid offsets {offs!r} for a {len(body)}-byte body")
        dtype = np.dtype(_ST_DTYPES[dt]).newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != offs[1] - offs[0]:
            raise fail(file, name, f"shape {shape} of {dt} needs {count * dtype.itemsize} bytes, offsets give {offs[1] - offs[0]}")
        arr = np.frombuffer(body[offs[0] : offs[1]], dtype=dtype).reshape(shape)
        out[name] = arr.astype(arr.dtype.newbyteorder("="), copy=True)
        spans.append(tuple(offs))
    pos = 0
    for b, e in sorted(spans):
        if b != pos:
            raise fail(file, "data_offsets", f"tensor data overlaps or leaves a gap at byte {pos}")
        pos = e
    if pos != len(body):
        raise fail(file, "data_offsets", f"{len(body) - pos} trailing bytes after the last tensor")
    return out


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in v)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _array_sha(arr: np.ndarray) -> str:
    """SHA-256 of an array's values (little-endian, C order): ties program.json to its tensors."""
    a = np.ascontiguousarray(arr)
    return _sha256(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


# ---------------------------------------------------------------------------------------------
# program <-> JSON + tensors
def _qparams_to_dict(qp: QParams) -> dict:
    return {"scale": to_jsonable(qp.scale), "zero_point": to_jsonable(qp.zero_point), "bits": int(qp.bits), "signed": bool(qp.signed),
            "narrow": bool(qp.narrow), "axis": None if qp.axis is None else int(qp.axis)}


def _array_name(idx: int, key: str) -> str:
    return f"instrs.{idx}.{key}"


def program_to_files(program: Program) -> tuple[dict, dict[str, np.ndarray]]:
    """(program.json object, tensors) for ``program``; sub-byte/int8 weights are packed."""
    tensors: dict[str, np.ndarray] = {}
    instrs = []
    for idx, ins in enumerate(program.instrs):
        arrays = []
        for key, arr in ins.arrays.items():
            arr = np.asarray(arr)
            name = _array_name(idx, key)
            entry = {"key": key, "tensor": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "sha256": _array_sha(arr)}
            bits = ins.attrs.get("weight_bits")
            if key == "weight" and arr.dtype == np.int8 and bits is not None:
                try:
                    tensors[name] = packing.pack(arr, int(bits), signed=True)
                except EdgequantError as e:
                    raise ArtifactError(f"cannot save instruction {idx} ({ins.op} from node '{ins.node}'): {e}") from e
                entry["packed_bits"] = int(bits)
            else:
                tensors[name] = arr
            arrays.append(entry)
        try:
            attrs = to_jsonable(dict(ins.attrs))
        except TypeError as e:
            raise ArtifactError(f"cannot save instruction {idx} ({ins.op} from node '{ins.node}'): attrs: {e}") from e
        instrs.append({"op": ins.op, "inputs": list(ins.inputs), "output": ins.output, "node": ins.node,
                       "attrs": attrs, "arrays": arrays})
    infos = [{"name": name, "dtype": t.dtype, "shape": [int(d) for d in t.shape],
              "qparams": None if t.qparams is None else _qparams_to_dict(t.qparams)}
             for name, t in program.tensors.items()]
    try:
        meta = to_jsonable(program.meta)
    except TypeError as e:
        raise ArtifactError(f"cannot save the program's meta: {e}") from e
    doc = {"schema": PROGRAM_SCHEMA, "version": PROGRAM_VERSION, "input": program.input, "output": program.output,
           "tensors": infos, "instrs": instrs, "meta": meta}
    return doc, tensors


# ---------------------------------------------------------------------------------------------
# golden check
def _golden_input(program: Program) -> np.ndarray:
    """Seeded random input: uniform over the input quantizer's real range, else standard normal."""
    rng = np.random.default_rng(GOLDEN_SEED)
    shape = (GOLDEN_BATCH,) + tuple(program.input_shape[1:])
    first = next((i for i in program.instrs if program.input in i.inputs), None)
    qp = program.tensors[first.output].qparams if first is not None and first.op == "quantize" else None
    if qp is not None and qp.axis is None:
        s, z = float(qp.scale), int(qp.zero_point)
        return rng.uniform(s * (qp.qmin - z), s * (qp.qmax - z), shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _exact(program: Program) -> bool:
    """Bit-exact golden comparison unless float kernels (``*_f``, torch) may round per CPU."""
    return not any(i.op.endswith("_f") for i in program.instrs)


def _digest(y: np.ndarray) -> str:
    y = np.ascontiguousarray(y)
    return _sha256(f"{y.dtype.str}{list(y.shape)}".encode() + y.tobytes())[:16]


def _golden_run(program: Program, x: np.ndarray, check=None) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Outputs and per-instruction digests of ``program`` on ``x`` in every rounding mode."""
    from . import interpreter

    outs, digests = {}, {}
    for mode in ROUNDING_MODES:
        seen: list[str] = []

        def trace(ins: Instr, y: np.ndarray) -> None:
            if check is not None:
                check(ins, y)
            seen.append(_digest(y))

        outs[mode] = np.asarray(interpreter.run(program, x, rounding=mode, trace=trace))
        digests[mode] = seen
    return outs, digests


# ---------------------------------------------------------------------------------------------
# save
def artifact_files(q) -> dict[str, bytes]:
    """Every file of ``q``'s artifact as bytes (deterministic); ``save`` writes exactly these."""
    from . import __version__

    program, recipe = q.program, q.recipe
    doc, tensors = program_to_files(program)
    x = _golden_input(program)
    exact = _exact(program)
    outs, digests = _golden_run(program, x)
    golden = {"input": "golden.input", "outputs": {}, "compare": "exact" if exact else "rtol",
              "rtol": None if exact else GOLDEN_RTOL, "digests": digests if exact else None}
    tensors["golden.input"] = x
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
        "model": {"input": program.input, "input_shape": list(program.input_shape), "input_dtype": "float32",
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


def _need(cond: bool, fail: _Fail, field: str, problem: str, file: str = PROGRAM) -> None:
    if not cond:
        raise fail(file, field, problem)


def _decode(v, fail: _Fail, field: str):
    try:
        return from_jsonable(v)
    except (ValueError, TypeError, RecursionError) as e:
        raise fail(PROGRAM, field, str(e)) from None


def _shape(v, fail: _Fail, field: str) -> tuple[int, ...]:
    _need(_int_list(v) and len(v) >= 1 and all(1 <= d <= 1 << 24 for d in v), fail, field, f"invalid shape {v!r}")
    _need(int(np.prod(v[1:], dtype=np.int64)) <= MAX_INPUT_ELEMENTS, fail, field, f"implausibly large shape {v!r}")
    return tuple(v)


def _dtype_name(v, fail: _Fail, field: str) -> np.dtype:
    ok = isinstance(v, str) and v in _ST_CODES
    _need(ok, fail, field, f"unsupported dtype {v!r}")
    return np.dtype(v)


def _qparams(d, dtype: np.dtype, shape: tuple[int, ...], fail: _Fail, field: str) -> QParams:
    _need(isinstance(d, dict) and set(d) == {"scale", "zero_point", "bits", "signed", "narrow", "axis"}, fail, field,
          "malformed qparams")
    bits, signed, narrow, axis = d["bits"], d["signed"], d["narrow"], d["axis"]
    _need(isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= 8, fail, f"{field}.bits",
          f"bit width {bits!r} is not supported (1..8)")
    _need(isinstance(signed, bool) and isinstance(narrow, bool), fail, field, "signed/narrow must be booleans")
    _need(dtype.kind in "iu", fail, field, f"qparams on a {dtype.name} tensor")
    lo, hi = qrange(bits, signed, narrow)
    info = np.iinfo(dtype)
    _need(info.min <= lo and hi <= info.max, fail, f"{field}.bits", f"{bits}-bit range [{lo}, {hi}] does not fit {dtype.name}")
    scale, zp = _decode(d["scale"], fail, f"{field}.scale"), _decode(d["zero_point"], fail, f"{field}.zero_point")
    s, z = np.asarray(scale), np.asarray(zp)
    _need(s.dtype.kind == "f" and s.size >= 1 and bool(np.all(np.isfinite(s))) and bool(np.all(s > 0)), fail,
          f"{field}.scale", f"scale must be finite and > 0, got {s.reshape(-1)[:4].tolist()}")
    _need(z.dtype.kind in "iu" and z.shape == s.shape and bool(np.all((z >= lo) & (z <= hi))), fail,
          f"{field}.zero_point", f"zero point must be integers in [{lo}, {hi}] shaped like the scale, got {z.reshape(-1)[:4].tolist()}")
    if axis is None:
        _need(s.size == 1, fail, f"{field}.scale", f"per-tensor qparams need one scale, got {s.size}")
    else:
        _need(isinstance(axis, int) and not isinstance(axis, bool) and 0 <= axis < len(shape), fail, f"{field}.axis",
              f"axis {axis!r} out of range for shape {shape}")
        _need(s.shape == (shape[axis],), fail, f"{field}.scale", f"per-channel scale shape {s.shape} != ({shape[axis]},)")
    return QParams(scale, zp, bits, signed, narrow, axis)


_GEMM_OPS = {"conv": "conv", "conv_dyn": "conv", "conv_f": "conv", "linear": "linear", "linear_dyn": "linear",
             "linear_f": "linear"}


def _check_instr(k: int, ins: Instr, tensors: dict[str, TensorInfo], fail: _Fail) -> None:
    """Attribute and shape checks the kernels rely on (those not covered by the golden run)."""
    f = f"instrs[{k}]"
    a = ins.attrs
    out = tensors[ins.output]
    if "weight_bits" in a:
        wb = a["weight_bits"]
        _need(isinstance(wb, int) and not isinstance(wb, bool) and 1 <= wb <= 8, fail, f"{f}.attrs.weight_bits",
              f"bit width {wb!r} is not supported (1..8)")
    if out.qparams is not None:
        lo, hi = out.qparams.qmin, out.qparams.qmax
        for key in ("act_min", "act_max"):
            if key in a:
                v = a[key]
                _need(isinstance(v, (int, np.integer)) and lo <= v <= hi, fail, f"{f}.attrs.{key}", f"{v!r} outside [{lo}, {hi}]")
        _need(a.get("act_min", lo) <= a.get("act_max", hi), fail, f"{f}.attrs", "act_min > act_max")
    for key, v in a.items():
        if key.startswith("m0_"):
            _need(isinstance(v, (int, np.integer)) and 0 <= v < 2**31, fail, f"{f}.attrs.{key}", f"Q31 multiplier {v!r} out of range")
        if key.startswith("shift_"):
            _need(isinstance(v, (int, np.integer)) and -31 <= v <= 30, fail, f"{f}.attrs.{key}", f"shift {v!r} out of range")
    arr = ins.arrays
    if "m0" in arr:
        _need(arr["m0"].dtype.kind in "iu" and bool(np.all((arr["m0"] >= 0) & (arr["m0"] < 2**31))), fail,
              f"{f}.arrays.m0", "Q31 multipliers out of range")
    if "shift" in arr:
        _need(arr["shift"].dtype.kind in "iu" and bool(np.all((arr["shift"] >= -31) & (arr["shift"] <= 30))), fail,
              f"{f}.arrays.shift", "shifts out of range [-31, 30]")
    for key in ("multiplier", "w_scale"):
        if key in arr:
            _need(arr[key].dtype.kind == "f" and bool(np.all(np.isfinite(arr[key]))), fail, f"{f}.arrays.{key}", "not finite")
    kind = _GEMM_OPS.get(ins.op)
    if kind is None or "weight" not in arr:
        return
    w = arr["weight"]
    x = tensors[ins.inputs[0]] if ins.inputs else None
    _need(len(ins.inputs) == 1 and x is not None, fail, f"{f}.inputs", f"{ins.op} takes one input")
    if kind == "linear":
        _need(w.ndim == 2 and w.shape[0] == out.shape[-1] and w.shape[1] == x.shape[-1], fail, f"{f}.arrays.weight",
              f"weight shape {w.shape} does not map input {x.shape} to output {out.shape}")
    else:
        g = a.get("groups", 1)
        _need(_is_int(g) and g >= 1, fail, f"{f}.attrs.groups", f"invalid groups {g!r}")
        _need(w.ndim in (3, 4) and w.shape[0] == out.shape[1] and w.shape[1] * g == x.shape[1], fail,
              f"{f}.arrays.weight", f"weight shape {w.shape} (groups {g}) does not map input {x.shape} to output {out.shape}")
        for key in ("stride", "dilation"):
            v = a.get(key, (1,))
            _need(isinstance(v, (tuple, list)) and all(_is_int(s) and s >= 1 for s in v), fail, f"{f}.attrs.{key}", f"invalid {v!r}")
        pad = a.get("padding", (0,))
        _need(isinstance(pad, (tuple, list)) and all(_is_int(p) and 0 <= p <= 1 << 16 for p in pad), fail,
              f"{f}.attrs.padding", f"invalid {pad!r}")
    for key in ("bias", "bias_f", "w_scale", "m0", "shift", "multiplier"):
        if key in arr:
            _need(arr[key].ndim == 1 and arr[key].shape[0] in (1, w.shape[0]), fail, f"{f}.arrays.{key}",
                  f"shape {arr[key].shape} does not match {w.shape[0]} output channels")


def program_from_files(doc: dict, tensors: dict[str, np.ndarray], fail: _Fail) -> Program:
    """Rebuild and validate a Program from program.json's object and the stored tensors."""
    from .kernels import RUN

    _need(doc.get("schema") == PROGRAM_SCHEMA, fail, "schema", f"expected {PROGRAM_SCHEMA!r}, got {doc.get('schema')!r}")
    ver = doc.get("version")
    _need(isinstance(ver, int) and not isinstance(ver, bool) and 1 <= ver <= PROGRAM_VERSION, fail, "version",
          f"program schema version {ver!r} is not supported (this edgequant reads {PROGRAM_VERSION}; upgrade it if newer)")
    _need(set(doc) == {"schema", "version", "input", "output", "tensors", "instrs", "meta"}, fail, "", "unexpected or missing keys")
    infos: dict[str, TensorInfo] = {}
    _need(isinstance(doc["tensors"], list), fail, "tensors", "must be a list")
    for k, t in enumerate(doc["tensors"]):
        f = f"tensors[{k}]"
        _need(isinstance(t, dict) and set(t) == {"name", "dtype", "shape", "qparams"} and isinstance(t["name"], str), fail, f,
              "malformed tensor info")
        _need(t["name"] not in infos, fail, f"{f}.name", f"duplicate tensor {t['name']!r}")
        dt = _dtype_name(t["dtype"], fail, f"{f}.dtype")
        shape = _shape(t["shape"], fail, f"{f}.shape")
        qp = None if t["qparams"] is None else _qparams(t["qparams"], dt, shape, fail, f"{f}.qparams")
        infos[t["name"]] = TensorInfo(t["dtype"], shape, qp)
    inp, outp = doc["input"], doc["output"]
    _need(isinstance(inp, str) and inp in infos, fail, "input", f"input {inp!r} has no tensor info")
    _need(len(infos[inp].shape) >= 2 and infos[inp].dtype == "float32", fail, "input", "the input must be a float32 (N, ...) tensor")
    defined = {inp}
    used: set[str] = set()
    instrs = []
    _need(isinstance(doc["instrs"], list), fail, "instrs", "must be a list")
    for k, d in enumerate(doc["instrs"]):
        f = f"instrs[{k}]"
        _need(isinstance(d, dict) and set(d) == {"op", "inputs", "output", "node", "attrs", "arrays"}, fail, f, "malformed instruction")
        op, ins_, out, node = d["op"], d["inputs"], d["output"], d["node"]
        _need(isinstance(op, str) and op in RUN, fail, f"{f}.op", f"unknown op {op!r} (no kernel in this edgequant)")
        _need(isinstance(ins_, list) and all(isinstance(i, str) for i in ins_), fail, f"{f}.inputs", "must be a list of names")
        for i in ins_:
            _need(i in defined, fail, f"{f}.inputs", f"uses {i!r} before it is defined")
        _need(isinstance(out, str) and out in infos and out not in defined, fail, f"{f}.output",
              f"{out!r} is redefined or has no tensor info")
        _need(isinstance(node, str), fail, f"{f}.node", "must be a string")
        attrs = _decode(d["attrs"], fail, f"{f}.attrs")
        _need(isinstance(attrs, dict), fail, f"{f}.attrs", "must be an object")
        arrays = {}
        _need(isinstance(d["arrays"], list), fail, f"{f}.arrays", "must be a list")
        for e in d["arrays"]:
            _need(isinstance(e, dict) and {"key", "tensor", "dtype", "shape", "sha256"} <= set(e)
                  <= {"key", "tensor", "dtype", "shape", "sha256", "packed_bits"}
                  and isinstance(e["key"], str) and isinstance(e["tensor"], str), fail, f"{f}.arrays", "malformed array entry")
            fa = f"{f}.arrays.{e['key']}"
            name = e["tensor"]
            _need(name in tensors and name not in used and not name.startswith("golden."), fail, f"{fa}.tensor",
                  f"tensor {name!r} is missing from {TENSORS} or used twice")
            _need(e["key"] not in arrays, fail, fa, "duplicate key")
            used.add(name)
            dt = _dtype_name(e["dtype"], fail, f"{fa}.dtype")
            shape = e["shape"]
            _need(_int_list(shape) and all(s >= 0 for s in shape), fail, f"{fa}.shape", f"invalid shape {shape!r}")
            stored = tensors[name]
            if "packed_bits" in e:
                bits = e["packed_bits"]
                _need(bits == attrs.get("weight_bits") and dt == np.int8 and e["key"] == "weight", fail, f"{fa}.packed_bits",
                      f"packed width {bits!r} does not match attrs.weight_bits {attrs.get('weight_bits')!r}")
                _need(stored.dtype == np.uint8 and stored.ndim == 1, fail, f"{fa}", "packed data must be 1-D uint8")
                try:
                    arrays[e["key"]] = packing.unpack(stored, bits, True, tuple(shape))
                except EdgequantError as err:
                    raise fail(TENSORS, name, str(err)) from None
            else:
                _need(stored.dtype == dt and list(stored.shape) == shape, fail, fa,
                      f"stored {stored.dtype}{list(stored.shape)} does not match declared {dt.name}{shape}")
                arrays[e["key"]] = stored
            _need(_array_sha(arrays[e["key"]]) == e["sha256"], fail, f"{fa}.sha256",
                  f"the values of tensor {name!r} in {TENSORS} are not the ones this program was saved with")
        instr = Instr(op, list(ins_), out, attrs, arrays, node)
        _check_instr(k, instr, infos, fail)
        instrs.append(instr)
        defined.add(out)
    _need(isinstance(outp, str) and outp in defined, fail, "output", f"output {outp!r} is not computed by any instruction")
    extra = sorted(n for n in tensors if n not in used and not n.startswith("golden."))
    _need(not extra, fail, "", f"{TENSORS} holds tensors no instruction uses: {extra[:3]}", file=TENSORS)
    meta = _decode(doc["meta"], fail, "meta")
    _need(isinstance(meta, dict), fail, "meta", "must be an object")
    return Program(instrs, inp, outp, infos, meta)


def _golden_check(program: Program, manifest: dict, tensors: dict[str, np.ndarray], fail: _Fail) -> None:
    """Rerun the stored golden input; every tensor's shape/dtype and the outputs must match."""
    g = manifest.get("golden")
    _need(isinstance(g, dict) and isinstance(g.get("outputs"), dict) and g.get("input") in tensors, fail, "golden",
          "missing or malformed", file=MANIFEST)
    _need(g.get("compare") == ("exact" if _exact(program) else "rtol"), fail, "golden.compare", "does not match the program", file=MANIFEST)
    _need(set(g["outputs"]) == set(ROUNDING_MODES) and all(v in tensors for v in g["outputs"].values()), fail,
          "golden.outputs", f"must name stored outputs for {list(ROUNDING_MODES)}", file=MANIFEST)
    x = tensors[g["input"]]
    _need(x.dtype == np.float32 and x.shape[1:] == tuple(program.input_shape[1:]) and x.shape[0] >= 1, fail, g["input"],
          "golden input does not match the program's input shape", file=TENSORS)

    def trace(ins: Instr, y: np.ndarray) -> None:
        info = program.tensors[ins.output]
        if y.dtype != np.dtype(info.dtype) or tuple(y.shape[1:]) != tuple(info.shape[1:]):
            raise fail(PROGRAM, f"tensors.{ins.output}", f"instruction {ins.op} produces {y.dtype}{list(y.shape)}, "
                       f"the program declares {info.dtype}{list(info.shape)}")

    exact = g["compare"] == "exact"
    digests = g.get("digests")
    _need(not exact or (isinstance(digests, dict) and set(digests) == set(ROUNDING_MODES)
                        and all(isinstance(v, list) and len(v) == len(program.instrs) for v in digests.values())),
          fail, "golden.digests", "need one digest per instruction and rounding mode", file=MANIFEST)
    try:
        got, got_digests = _golden_run(program, x, trace)
    except ArtifactError:
        raise
    except Exception as e:  # a consistent-looking program that cannot run is a corrupt artifact
        raise fail(PROGRAM, "", f"the program fails on its golden input: {type(e).__name__}: {e}") from e
    for mode in ROUNDING_MODES if exact else ():
        bad = next((k for k, (a, b) in enumerate(zip(digests[mode], got_digests[mode])) if a != b), None)
        if bad is not None:
            ins = program.instrs[bad]
            raise ArtifactError(f"artifact {fail.root}: instruction {bad} ({ins.op} from node '{ins.node}') computes "
                                f"differently on the golden input ({mode} rounding) than when it was saved: the files were "
                                "edited consistently, or this edgequant's kernels differ from the saving one; re-save the model")
    for mode, name in g["outputs"].items():
        want, y = tensors[name], got[mode]
        same = want.shape == y.shape and want.dtype == y.dtype
        if same and g["compare"] == "exact":
            same = bool(np.array_equal(want, y, equal_nan=True))
        elif same:
            tol = GOLDEN_RTOL * max(float(np.max(np.abs(want), initial=0.0)), 1e-6)
            same = bool(np.all(np.abs(want.astype(np.float64) - y) <= tol))
        if not same:
            raise ArtifactError(f"artifact {fail.root}: the program's output on its golden input ({mode} rounding) differs "
                                "from the one stored at save time: the files were edited consistently, or this edgequant "
                                "computes differently from the one that saved it; re-save the model with this version")


def read_manifest(path) -> dict:
    """The artifact's manifest after its format and checksum checks (for ``inspect``)."""
    root = Path(path)
    return _read_checked(root, _Fail(root))[0]


def load(path, verify: bool = True):
    """Read an artifact written by ``QuantizedModel.save`` and validate everything.

    Raises ``ArtifactError`` naming the file and field on any inconsistency. ``verify=False``
    skips the golden rerun (format, checksum and structure checks still apply).
    """
    from .quantized import QuantizedModel, program_size_bytes

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
    program = program_from_files(_parse_json(data[PROGRAM], PROGRAM, fail), tensors, fail)
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
