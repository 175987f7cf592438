"""Bytes on disk: canonical JSON, SHA-256, a strict safetensors reader/writer, and errors that name
the artifact, the file and the field."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import ArtifactError

FORMAT = "edgequant-artifact"
# Version history (the program.json schema version moves with it; load reads every listed version):
# 1: every weight packed whole at attrs.weight_bits (a bit-allocated tensor at its widest channel).
# 2: bit-allocated weights (attrs.channel_bits) packed per channel (packing.pack_rows), array entry
#    "packed_channel_bits"; the stored bytes equal attrs.packed_weight_bytes, the bytes size_bytes counts.
# 3: programs with keyword inputs (dict batches: token ids, masks): program.json "extra_inputs"; the
#    golden input is one stored tensor per input ("golden.input.<name>"); manifest model.inputs.
FORMAT_VERSION = 3
PROGRAM_SCHEMA = "edgequant-program"
PROGRAM_VERSION = FORMAT_VERSION
MANIFEST = "manifest.json"
PROGRAM = "program.json"
RECIPE = "recipe.json"
TENSORS = "tensors.safetensors"
FILES = (PROGRAM, RECIPE, TENSORS)
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


def _need(cond: bool, fail: _Fail, field: str, problem: str, file: str = PROGRAM) -> None:
    if not cond:
        raise fail(file, field, problem)

