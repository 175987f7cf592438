"""Run an exported ``.tflite`` with LiteRT (``ai-edge-litert``): reference or optimized kernels.

``kernels="reference"`` selects LiteRT's ``BUILTIN_REF`` op resolver, the plain C++ reference
kernels that the interpreter's gemmlowp mode reproduces bit for bit; ``"optimized"`` the default
resolver without delegates (ruy/NEON/SSE kernels, a few LSB apart on some ops); ``"default"``
what a LiteRT user gets with no options: the builtin kernels plus the XNNPACK delegate (used for
latency figures, not parity).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ExportError, InputError

KERNELS = ("reference", "optimized", "default")


def litert_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter(model, kernels: str = "reference", num_threads: int = 1):
    """A LiteRT ``Interpreter`` for ``model`` (bytes or a path)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:
        raise ExportError("running .tflite files needs LiteRT: pip install 'edgequant[tflite]' (ai-edge-litert)") from e
    if kernels not in KERNELS:
        raise ExportError(f"kernels {kernels!r} is not one of {KERNELS}")
    resolver = {"reference": OpResolverType.BUILTIN_REF, "optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                "default": OpResolverType.AUTO}[kernels]
    src = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": str(Path(model))}
    return Interpreter(**src, experimental_op_resolver_type=resolver, num_threads=num_threads)


def run_tflite(model, x: np.ndarray, kernels: str = "reference", num_threads: int = 1) -> np.ndarray:
    """Run ``model`` on the whole batch ``x`` (the batch dimension is resized to fit)."""
    it = model if hasattr(model, "invoke") else interpreter(model, kernels, num_threads)
    inp = it.get_input_details()[0]
    x = np.ascontiguousarray(np.asarray(x, inp["dtype"]))
    if x.ndim != len(inp["shape"]) or tuple(x.shape[1:]) != tuple(inp["shape"][1:]):
        raise InputError(f"input has shape {tuple(x.shape)}; the .tflite expects (N, {', '.join(map(str, inp['shape'][1:]))})")
    if tuple(inp["shape"]) != x.shape:
        it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()
