"""Latency: the median of a few timed runs of one fixed batch, per runtime that can run the recipe.

Runtimes: ``interpreter`` (the NumPy reference, always) and ``onnxruntime`` -- the exported
program in the ONNX Runtime session of ``edgequant.backends`` (what
``QuantizedModel.run(backend="onnxruntime")`` uses), with the sweep's ``--threads``. A runtime that cannot take a recipe is skipped with the reason recorded, never fatal.
"""
from __future__ import annotations

import statistics
import time
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


def _onnxruntime(q, threads: int | None = None) -> Runner:
    from ..backends import ort_feeds, ort_session

    sess = ort_session(q, threads)  # the session ``q.run(backend="onnxruntime")`` uses, same threads
    return lambda x: np.asarray(sess.run(None, ort_feeds(sess, x))[0], np.float32)


FAST: dict[str, Callable] = {"onnxruntime": _onnxruntime}


def fast_runner(q, runtime: str, threads: int | None = None) -> Runner:
    """A callable running ``q`` on ``runtime`` with ``threads`` intra-op threads (None: the
    runtime's default); raises (any exception) when it cannot."""
    if runtime not in FAST:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(FAST)}")
    return FAST[runtime](q, threads)
