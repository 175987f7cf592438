"""QuantizedModel: the result of ``edgequant.quantize`` -- run it, simulate it, size it."""
from __future__ import annotations

import numpy as np
import torch

from . import interpreter
from .errors import InputError
from .program import Program
from .recipes import Recipe

_FLOAT_BYTES = {"float32": 4, "float16": 2}


def _to_numpy(x) -> tuple[np.ndarray, bool]:
    """float32 array of a tensor/array input; non-numeric, boolean or complex inputs are errors."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_complex or x.dtype == torch.bool:
            raise InputError(f"input has dtype {x.dtype}; the model takes real-valued float32 inputs -- convert it, e.g. x.float()")
        return x.detach().cpu().float().numpy(), True
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(f"input must be a tensor or a numeric array, got {type(x).__name__} ({e})") from None
    if arr.dtype.kind not in "iuf":
        raise InputError(f"input has dtype {arr.dtype}; the model takes real-valued float32 inputs -- convert it, "
                         "e.g. np.asarray(x, np.float32)")
    return arr.astype(np.float32, copy=False), False


def program_size_bytes(program: Program) -> int:
    """Packed bytes a device stores: sub-byte weights packed, int32 bias, per-channel scales and
    activation qparams (8 bytes each). Requantization multipliers are derived at load, not stored."""
    total = 0
    for ins in program.instrs:
        for key, arr in ins.arrays.items():
            if key == "weight" and arr.dtype == np.int8:
                bits = ins.attrs.get("weight_bits", 8)
                total += int(ins.attrs.get("packed_weight_bytes", (arr.size * bits + 7) // 8))
            elif key in ("m0", "shift", "multiplier"):
                continue
            else:
                total += arr.nbytes
    total += 8 * sum(1 for t in program.tensors.values() if t.qparams is not None)
    return total


class QuantizedModel:
    """A quantized model: ``run`` executes the integer program, ``simulate`` its float fake-quant twin."""

    def __init__(self, program: Program, recipe: Recipe, graph=None, float_size_bytes: int | None = None) -> None:
        self.program = program
        self.recipe = recipe
        self.graph = graph  # the prepared float graph (BN folded), kept for analysis; not needed to run
        self.float_size_bytes = float_size_bytes
        # the float graph whose inner tensors line up with the program's: the captured one, or after
        # cross-layer equalization (channels rescaled inside, same output) when the recipe equalizes;
        # before PTQ steps such as bias correction, which deliberately move the float function
        self.reference_graph = graph

    def _input(self, x, check_finite: bool):
        if isinstance(x, dict) or len(self.program.inputs) > 1:  # keyword inputs (a dict batch)
            feeds = interpreter.program_feeds(self.program, x)
            bad = [k for k, v in feeds.items() if v.dtype == np.float32 and not np.all(np.isfinite(v))]
            if check_finite and bad:
                raise InputError(f"input {bad[0]!r} contains NaN or inf; clean it, or pass check_finite=False to run anyway")
            was_torch = not isinstance(x, dict) or any(isinstance(v, torch.Tensor) for v in x.values())
            return feeds, was_torch
        arr, was_torch = _to_numpy(x)
        interpreter.check_input(self.program, arr)  # before any backend: shape vs the captured graph
        if check_finite and not np.all(np.isfinite(arr)):
            raise InputError("input contains NaN or inf; clean it, or pass check_finite=False to run anyway")
        return arr, was_torch

    def run(self, x, rounding: str = "gemmlowp", return_int: bool = False, check_finite: bool = True,
            backend: str = "interpreter", chunk: int | None = None, memory_mb: float | None = None):
        """Execute the program (reference interpreter). Output type follows the input type.

        Large batches run in chunks of ``chunk`` samples, or as many as fit ``memory_mb`` of working
        memory (default ``interpreter.DEFAULT_MEMORY_MB``); the output does not depend on it.
        """
        arr, was_torch = self._input(x, check_finite)
        if backend != "interpreter":
            from .backends import run_backend  # the ONNX Runtime fast path, when available

            y = run_backend(self, arr, backend)
        else:
            y = interpreter.run(self.program, arr, rounding=rounding, return_int=return_int, chunk=chunk,
                                memory_mb=memory_mb)
        return torch.from_numpy(np.ascontiguousarray(y)) if was_torch else y

    def simulate(self, x, rounding: str = "gemmlowp", return_int: bool = False, check_finite: bool = True,
                 chunk: int | None = None, memory_mb: float | None = None):
        """Float fake-quant model of the same program (float64), chunked like ``run``."""
        arr, was_torch = self._input(x, check_finite)
        with torch.no_grad():
            y = interpreter.simulate(self.program, arr, rounding=rounding, return_int=return_int, chunk=chunk,
                                     memory_mb=memory_mb)
        y = y.float()
        return y if was_torch else y.numpy()

    __call__ = run

    def layer_errors(self, x, rounding: str = "gemmlowp") -> list[dict]:
        """Per quantized layer, in program order: ``{layer, module, op, weight_bits, sqnr_db}``, the SQNR
        of its output in this program (every earlier layer's error included, as a device computes it)
        against the float model's output of that layer, on batch ``x`` (a tensor or a dict of keyword
        inputs). Where a transformer loses fidelity, this says which layers; ``sqnr_db`` None = exact."""
        if self.reference_graph is None:
            raise InputError("layer_errors needs the float graph, which a loaded artifact does not carry; call it on "
                             "the QuantizedModel that eq.quantize returned")
        from .sweep.layers import layer_sqnr

        return layer_sqnr(self.program, self.reference_graph, x, rounding)

    def save(self, path) -> None:
        """Write the artifact (graph JSON + packed tensors + manifest with checksums)."""
        from .artifact import save

        save(self, path)

    def export(self, path, format: str = "onnx", **options) -> None:
        """Write a deployable file for another runtime (``"onnx"``; ``"tflite"`` where supported)."""
        from .export import export

        export(self, path, format=format, **options)

    @property
    def size_bytes(self) -> int:
        return program_size_bytes(self.program)

    @property
    def compression(self) -> float | None:
        return None if not self.float_size_bytes else self.size_bytes / self.float_size_bytes

    def __repr__(self) -> str:
        return (f"QuantizedModel(recipe={self.recipe.name!r}, instructions={len(self.program.instrs)}, "
                f"size_bytes={self.size_bytes})")
