"""Fast backends for ``QuantizedModel.run(x, backend=...)``; the interpreter stays the reference.

``"onnxruntime"`` exports the program to ONNX (QDQ, uint8 activations, see ``export.onnx``)
once, keeps the ONNX Runtime session on the model, and runs it with all graph optimizations on.
Its integer outputs equal the interpreter's ``rounding="onnxruntime"`` mode (tests assert it);
the default ``"gemmlowp"`` mode rounds like TFLite and may differ by one LSB here and there.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import ExportError, InputError

_CACHE_ATTR = "_ort_sessions"


def ort_session(q, threads: int | None = None, **export_options):
    """The ONNX Runtime session of quantized model ``q`` (built once per thread count/options).

    ``threads``: intra-op threads (None: ONNX Runtime's default, all cores).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        raise ExportError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime") from e
    from .export.onnx import to_onnx

    cache = q.__dict__.setdefault(_CACHE_ATTR, {})
    key = (id(q.program), threads, tuple(sorted(export_options.items())))
    if key not in cache:
        model = to_onnx(q, **export_options)
        cache[key] = ort.InferenceSession(model.SerializeToString(), ort_options(threads), providers=["CPUExecutionProvider"])
    return cache[key]


def ort_options(threads: int | None):
    """ONNX Runtime session options as every edgequant session uses them: all graph optimizations,
    quiet logs, ``threads`` intra-op threads (None: ORT's default) and one inter-op thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return so


def ort_feeds(sess, x) -> dict[str, np.ndarray]:
    """Session feeds from one array (a one-input model) or a dict of keyword inputs (token ids and
    masks as int64, the rest float32), by the exported graph's input names."""
    if not isinstance(x, dict):
        return {sess.get_inputs()[0].name: np.ascontiguousarray(np.asarray(x), np.float32)}
    feeds = {}
    for i in sess.get_inputs():
        if i.name not in x:
            raise InputError(f"the exported model needs input {i.name!r}; the batch has {sorted(x)}")
        v = np.asarray(x[i.name])
        feeds[i.name] = np.ascontiguousarray(v, np.int64 if "int64" in i.type else np.float32)
    return feeds


def _run_onnxruntime(q, x) -> np.ndarray:
    sess = ort_session(q)
    if isinstance(x, dict):  # keyword inputs, already checked against the program (QuantizedModel._input)
        return sess.run(None, ort_feeds(sess, x))[0]
    want = q.program.input_shape
    if x.ndim != len(want) or tuple(x.shape[1:]) != tuple(want[1:]):
        raise InputError(f"input has shape {tuple(x.shape)}; the model was captured for (N, {', '.join(map(str, want[1:]))})")
    return sess.run(None, {q.program.input: np.ascontiguousarray(x, np.float32)})[0]


BACKENDS: dict[str, Callable[[object, np.ndarray], np.ndarray]] = {"onnxruntime": _run_onnxruntime}


def run_backend(q, x, backend: str) -> np.ndarray:
    """Run quantized model ``q`` on float input ``x`` (or a dict of keyword inputs) with ``backend`` -> float output."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; use 'interpreter' (the reference) or one of {sorted(BACKENDS)}")
    return BACKENDS[backend](q, x if isinstance(x, dict) else np.asarray(x, np.float32))
