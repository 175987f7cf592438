"""Latency: the median of a few timed runs of one fixed batch, per runtime that can run the recipe.

Runtimes: ``interpreter`` (the NumPy reference, always) and ``onnxruntime`` -- through
``QuantizedModel.run(backend="onnxruntime")`` where ``edgequant.backends`` exists, otherwise
by exporting the program with ``QuantizedModel.export`` and running that file in an ONNX Runtime
session. A runtime that cannot take a recipe is skipped with the reason recorded, never fatal.
"""
from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def median_ms(fn: Callable[[], object], repeats: int, warm: bool = False) -> float:
    """Median wall time in ms of ``repeats`` calls, after one untimed warm-up call (unless ``warm``)."""
    if not warm:
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def _onnxruntime(q) -> Runner:
    if importlib.util.find_spec("edgequant.backends") is not None:
        return lambda x: np.asarray(q.run(x, backend="onnxruntime"), np.float32)
    if importlib.util.find_spec("edgequant.export") is None:
        raise RuntimeError("this edgequant has neither edgequant.backends nor edgequant.export")
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgequant-sweep-") as d:
        path = Path(d) / "model.onnx"
        q.export(path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])  # reads the file now
    name = sess.get_inputs()[0].name
    return lambda x: np.asarray(sess.run(None, {name: np.ascontiguousarray(x, np.float32)})[0], np.float32)


FAST: dict[str, Callable] = {"onnxruntime": _onnxruntime}


def fast_runner(q, runtime: str) -> Runner:
    """A callable running ``q`` on ``runtime``; raises (any exception) when it cannot."""
    if runtime not in FAST:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(FAST)}")
    return FAST[runtime](q)
