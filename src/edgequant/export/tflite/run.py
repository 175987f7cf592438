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
    """Run ``model`` on the whole batch ``x``: the batch dimension is resized to fit, or, in a file
    with a fixed batch B (an LSTM's state tensors), ``x`` goes in chunks of B (the last one padded)
    with the state reset to zero before each."""
    it = model if hasattr(model, "invoke") else interpreter(model, kernels, num_threads)
    inp = it.get_input_details()[0]
    x = np.ascontiguousarray(np.asarray(x, inp["dtype"]))
    if x.ndim != len(inp["shape"]) or tuple(x.shape[1:]) != tuple(inp["shape"][1:]):
        raise InputError(f"input has shape {tuple(x.shape)}; the .tflite expects (N, {', '.join(map(str, inp['shape'][1:]))})")
    sig = inp.get("shape_signature", inp["shape"])
    out_index = it.get_output_details()[0]["index"]
    if len(sig) and sig[0] != -1 and x.shape[0] != inp["shape"][0]:
        b = int(inp["shape"][0])
        it.allocate_tensors()
        outs = []
        for k in range(0, x.shape[0], b):
            chunk = x[k:k + b]
            pad = np.concatenate([chunk, np.repeat(chunk[-1:], b - len(chunk), axis=0)]) if len(chunk) < b else chunk
            it.reset_all_variables()
            it.set_tensor(inp["index"], np.ascontiguousarray(pad))
            it.invoke()
            outs.append(it.get_tensor(out_index)[:len(chunk)].copy())
        return np.concatenate(outs)
    if tuple(inp["shape"]) != x.shape:
        it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.reset_all_variables()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(out_index).copy()
