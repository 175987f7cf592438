"""Batches of several keyword inputs: a dict of tensors, the Hugging Face convention
(``{"input_ids": ..., "attention_mask": ...}``).

Why one module: calibration, the float graph, the interpreter and ``QuantizedModel`` all take
"a batch"; a tensor stays the one-input case and a dict maps input names to arrays. Integer inputs
(token ids, padding masks; an input node with ``attrs["dtype"] == "int64"``) stay int64 -- they are
indices and 0/1 flags, never quantized.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import InputError

INT_DTYPE = "int64"


def is_int_input(attrs: dict) -> bool:
    """True for an input node (``Node.attrs``) that carries integers (token ids, a padding mask)."""
    return attrs.get("dtype") == INT_DTYPE


def _array(v, name: str, error: type) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        if v.dtype.is_complex:
            raise error(f"input {name!r} has dtype {v.dtype}; the model takes real-valued inputs")
        return v.numpy() if v.dtype != torch.bfloat16 else v.float().numpy()
    try:
        arr = np.asarray(v)
    except (TypeError, ValueError) as e:
        raise error(f"input {name!r} must be a tensor or a numeric array, got {type(v).__name__} ({e})") from None
    if arr.dtype.kind not in "biuf":
        raise error(f"input {name!r} has dtype {arr.dtype}; the model takes numeric inputs")
    return arr


def to_feeds(x, names: list[str], int_names: set[str], shapes: dict[str, tuple], error: type = InputError,
             what: str = "input") -> dict[str, np.ndarray]:
    """``{name: array}`` for the program/graph inputs ``names``: int64 for ``int_names``, float32
    else; every array (N, ...) with the captured per-sample shape and one batch size N."""
    if not isinstance(x, dict):
        if len(names) != 1:
            raise error(f"the model takes {len(names)} keyword inputs ({', '.join(names)}); pass a dict batch "
                        f"{{{', '.join(repr(n) + ': ...' for n in names)}}}")
        x = {names[0]: x}
    missing = [n for n in names if n not in x]
    extra = [k for k in x if k not in names]
    if missing or extra:
        raise error(f"{what} keys {sorted(map(str, x))} do not match the model's inputs {names}"
                    + (f": missing {missing}" if missing else "") + (f"; not inputs of the model: {extra}" if extra else "")
                    + " -- pass the same keys as the example the model was captured with")
    feeds, n = {}, None
    for name in names:
        arr = _array(x[name], name, error)
        if name in int_names:
            if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
                raise error(f"input {name!r} is an integer input (token ids or a mask) but holds fractions")
            arr = arr.astype(np.int64, copy=False)
        else:
            if arr.dtype == np.bool_:
                raise error(f"input {name!r} has dtype bool; the model takes real-valued float32 inputs -- convert it")
            arr = arr.astype(np.float32, copy=False)
        want = tuple(shapes[name])
        if arr.ndim != len(want) or tuple(arr.shape[1:]) != want[1:]:
            hint = (" -- pad every batch to the captured length (e.g. tokenizer(..., padding='max_length', "
                    f"max_length={want[1]}, truncation=True))") if name in int_names and len(want) == 2 else ""
            raise error(f"{what} {name!r} has shape {tuple(arr.shape)}; the model was captured for "
                        f"(N, {', '.join(map(str, want[1:]))}){hint}")
        if n is not None and arr.shape[0] != n:
            raise error(f"{what} {name!r} has batch {arr.shape[0]}, {names[0]!r} has {n}; all inputs need one batch size")
        n = arr.shape[0]
        feeds[name] = np.ascontiguousarray(arr)
    return feeds


def batch_size(x) -> int:
    """Samples in a batch (a tensor/array, or a dict of them)."""
    if isinstance(x, dict):
        return int(next(iter(x.values())).shape[0]) if x else 0
    return int(x.shape[0]) if getattr(x, "ndim", 1) > 0 else 1  # a 0-d tensor: one value (refused later)


def take(x, start: int, stop: int):
    """Samples ``start:stop`` of a batch (a tensor/array, or a dict of them)."""
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


def float_part(x) -> torch.Tensor | None:
    """The first float tensor of a batch (what input statistics and finiteness checks look at)."""
    if not isinstance(x, dict):
        return x
    for v in x.values():
        if isinstance(v, torch.Tensor) and v.dtype.is_floating_point:
            return v
    return None


def float_inputs(x):
    """A batch for the float graph: a tensor as float32; a dict as is (``GraphModule`` casts)."""
    return x if isinstance(x, dict) else x.float()


class KeywordBatch(dict):
    """A dict batch that slices, repeats and converts like one tensor, so the sweep (written for
    ``(N, ...)`` tensors) can carry keyword inputs unchanged: ``b[2:5]`` slices every input,
    ``b["input_ids"]`` is an input, ``b.shape`` is the first input's."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return KeywordBatch({k: v[key] for k, v in self.items()})

    @property
    def shape(self) -> tuple:
        return tuple(next(iter(self.values())).shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> "KeywordBatch":
        return KeywordBatch({k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in self.items()})

    def float(self) -> "KeywordBatch":
        return KeywordBatch({k: v.float() if v.dtype.is_floating_point else v for k, v in self.items()})

    def repeat(self, sizes) -> "KeywordBatch":
        reps = int(sizes[0])
        return KeywordBatch({k: v.repeat((reps,) + (1,) * (v.ndim - 1)) for k, v in self.items()})

    def numel(self) -> int:
        return int(np.prod(self.shape))


def cat(parts: list):
    """Concatenate batches along the batch dim (tensors, or dicts input by input)."""
    if parts and isinstance(parts[0], dict):
        return KeywordBatch({k: torch.cat([torch.as_tensor(p[k]) for p in parts]) for k in parts[0]})
    return torch.cat(parts)


def as_torch(x):
    """A NumPy batch (array or dict of arrays) as torch."""
    if isinstance(x, dict):
        return KeywordBatch({k: torch.from_numpy(np.asarray(v)) for k, v in x.items()})
    return torch.from_numpy(x)


def call_model(model, x):
    """``model(x)``, or ``model(**x)`` for a dict batch (keyword inputs)."""
    return model(**x) if isinstance(x, dict) else model(x)


def input_value(x, node) -> torch.Tensor:
    """The value of input ``node`` (an IR input node) in batch ``x``: int64 ids/masks, float32 else."""
    v = torch.as_tensor(x[node.name] if isinstance(x, dict) else x)
    return v.long() if is_int_input(node.attrs) else v.float()
