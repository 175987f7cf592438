"""IntProgram: the lowered, runnable form of a quantized model.

A flat list of instructions over named tensors. Integer instructions hold int8 weights, int32
biases and requantization parameters (int32 M0 + shift for gemmlowp, float32 multiplier for the
ONNX Runtime mode); float instructions (fp32/fp16/dynamic recipes) hold float weights. Everything
is plain data (JSON attrs + NumPy arrays) so it saves, loads and exports without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .qmath import QParams


@dataclass
class Instr:
    op: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    node: str = ""  # the graph node it came from (for messages, per-layer reports)


@dataclass
class TensorInfo:
    dtype: str  # "int8" | "float32"
    shape: tuple[int, ...]  # example shape, batch in dim 0
    qparams: QParams | None = None


@dataclass
class Program:
    instrs: list[Instr]
    input: str
    output: str
    tensors: dict[str, TensorInfo]
    meta: dict = field(default_factory=dict)
    extra_inputs: list[str] = field(default_factory=list)  # keyword inputs after the first (dict batches)

    @property
    def inputs(self) -> list[str]:
        return [self.input, *self.extra_inputs]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.tensors[self.input].shape

    @property
    def output_qparams(self) -> QParams | None:
        """QParams of the integer tensor that is dequantized into the output, if any."""
        last = next((i for i in reversed(self.instrs) if i.output == self.output), None)
        if last is not None and last.op == "dequantize":
            return self.tensors[last.inputs[0]].qparams
        return None

    def summary(self) -> str:
        rows = []
        for i in self.instrs:
            arr = ", ".join(f"{k}:{v.dtype}{list(v.shape)}" for k, v in i.arrays.items())
            rows.append(f"{i.op:<12} {','.join(i.inputs):<30} -> {i.output:<24} {arr}")
        return "\n".join(rows)


# -- exact JSON encoding of attrs/meta (used by the artifact) ---------------------------------------
# JSON has no tuples, numpy scalars/arrays or non-finite floats; those are tagged so that decoding
# restores the very same Python objects (a tuple stays a tuple, np.int32 stays np.int32), which
# is what keeps a loaded program bit-identical. Finite floats are written with repr (exact).
_TAGS = ("$tuple", "$float", "$scalar", "$array", "$dict")
_NUMERIC_KINDS = "biuf"


def to_jsonable(v):
    """Python/NumPy value -> JSON-able value that ``from_jsonable`` restores exactly.

    Raises ``TypeError`` for values with no exact JSON form (objects, complex, non-str keys).
    """
    if isinstance(v, np.generic):
        if v.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"numpy scalar of dtype {v.dtype} cannot be saved")
        return {"$scalar": v.dtype.name, "value": to_jsonable(v.item())}
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        if np.isfinite(v):
            return v
        return {"$float": "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")}
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"numpy array of dtype {v.dtype} cannot be saved")
        return {"$array": v.dtype.name, "shape": list(v.shape), "data": [to_jsonable(x) for x in v.reshape(-1).tolist()]}
    if isinstance(v, tuple):
        return {"$tuple": [to_jsonable(x) for x in v]}
    if isinstance(v, list):
        return [to_jsonable(x) for x in v]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise TypeError(f"dict keys must be strings, got {sorted(type(k).__name__ for k in v)}")
        out = {k: to_jsonable(x) for k, x in v.items()}
        return {"$dict": out} if any(k.startswith("$") for k in v) else out
    raise TypeError(f"value of type {type(v).__name__} cannot be saved as JSON")


_DTYPE_NAMES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                "float16", "float32", "float64")


def _dtype(name) -> np.dtype:
    if name not in _DTYPE_NAMES:  # never hand an arbitrary string to np.dtype's parser
        raise ValueError(f"unsupported dtype {name!r}")
    return np.dtype(name)


def from_jsonable(v):
    """Inverse of ``to_jsonable``; raises ``ValueError`` on malformed input."""
    if v is None or isinstance(v, (bool, str, int, float)):
        return v
    if isinstance(v, list):
        return [from_jsonable(x) for x in v]
    if not isinstance(v, dict):
        raise ValueError(f"unexpected JSON value of type {type(v).__name__}")
    tags = [t for t in _TAGS if t in v]
    if not tags:
        return {k: from_jsonable(x) for k, x in v.items()}
    tag = tags[0]
    if tag == "$tuple" and len(v) == 1 and isinstance(v[tag], list):
        return tuple(from_jsonable(x) for x in v[tag])
    if tag == "$dict" and len(v) == 1 and isinstance(v[tag], dict):
        return {k: from_jsonable(x) for k, x in v[tag].items()}
    if tag == "$float" and len(v) == 1 and v[tag] in ("nan", "inf", "-inf"):
        return float(v[tag])
    if tag == "$scalar" and set(v) == {"$scalar", "value"}:
        val = from_jsonable(v["value"])
        if not isinstance(val, (bool, int, float)):
            raise ValueError(f"numpy scalar value must be a number, got {val!r}")
        dt = _dtype(v[tag])
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                out = dt.type(val)
        except (OverflowError, ValueError, TypeError):
            raise ValueError(f"{val!r} does not fit dtype {dt.name}") from None
        if out.item() != val and not (isinstance(val, float) and np.isnan(val)):
            raise ValueError(f"{val!r} does not fit dtype {dt.name}")
        return out
    if tag == "$array" and set(v) == {"$array", "shape", "data"}:
        dt = _dtype(v[tag])
        shape, data = v["shape"], v["data"]
        if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                or not isinstance(data, list) or int(np.prod(shape, dtype=np.int64)) != len(data)):
            raise ValueError(f"array shape {shape!r} does not match its {len(data) if isinstance(data, list) else '?'} values")
        vals = [from_jsonable(x) for x in data]
        if not all(isinstance(x, (bool, int, float)) for x in vals):
            raise ValueError("array values must be numbers")
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                arr = np.array(vals, dtype=dt).reshape(shape) if vals else np.zeros(shape, dt)
        except (OverflowError, ValueError, TypeError):
            raise ValueError(f"array values do not fit dtype {dt.name}") from None
        if any(a != b and not (isinstance(b, float) and np.isnan(b)) for a, b in zip(arr.reshape(-1).tolist(), vals)):
            raise ValueError(f"array values do not fit dtype {dt.name}")
        return arr
    raise ValueError(f"malformed tagged value {sorted(v)}")
