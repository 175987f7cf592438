"""Measuring a candidate: the task metric of its *integer program* on the evaluation set.

Each candidate runs on the fastest engine verified equal to the reference interpreter for that
very program (``sweep.engines``: ONNX Runtime when it matches the interpreter's argmax and stays
within 1 LSB on the verification sample, else the interpreter), exactly as a sweep row does, so a
search's drop is the drop a sweep would report for the same recipe.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..calibrate import iter_batches
from ..deadline import check_deadline
from ..errors import InputError, PluginError
from ..quantized import QuantizedModel
from ..sweep import engines, timing

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def metric_fn(metric) -> tuple[str, Metric]:
    """(name, fn) for ``"top1" | "top5" | "agreement" | "FILE.py:FUNC"`` or a callable ``fn(logits, y)``."""
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    from ..sweep.plugins import load_metric

    return load_metric(metric)


def eval_batches(data) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation set read once: a list of (x float32, y) batches."""
    out = []
    for b, item in enumerate(data):
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise InputError(f"eval batch {b} is a {type(item).__name__}; eval must yield (x, y) batches like the "
                             "sweep's data (a DataLoader of (x, y) works; for unlabeled data use metric='agreement' "
                             "with any y)")
        x, y = torch.as_tensor(item[0]).float(), torch.as_tensor(item[1])
        if x.shape[0]:
            out.append((x, y))
    if not out:
        raise InputError("eval is empty; pass at least one (x, y) batch to measure the accuracy drop on")
    return out


@dataclass
class Measured:
    accuracy: float
    drop: float
    engine: str
    engine_note: str
    rounding: str
    seconds: float


class Evaluator:
    """The metric of the fp32 model and of integer programs on one evaluation set, in percent."""

    def __init__(self, model: torch.nn.Module, batches, metric, rounding: str = "gemmlowp",
                 backends: tuple[str, ...] = ("onnxruntime",), threads: int | None = None,
                 verify_samples: int = 256, latency_batch: int = 64, repeats: int = 5) -> None:
        self.batches = batches
        self.name, self.fn = metric_fn(metric)
        self.rounding, self.backends, self.threads, self.repeats = rounding, tuple(backends), threads, repeats
        self.x = torch.cat([x for x, _ in batches])
        with torch.no_grad():
            try:
                self.fp32_logits = torch.cat([model(x).float() for x, _ in batches])
            except Exception as e:
                raise InputError(f"the float model failed on the eval data ({type(e).__name__}: {e}); eval must "
                                 "yield (x, y) batches the model accepts") from e
        self.y = self.fp32_logits.argmax(1) if self.name == "agreement" else torch.cat([y for _, y in batches])
        raw = float(self.fn(self.fp32_logits, self.y))
        self.factor = 100.0 if abs(raw) <= 1.0 else 1.0  # fractions become percentages, as in the sweep
        self.fp32 = raw * self.factor
        self.verify_x = self.x[:verify_samples].numpy()
        self.latency_x = self.x[:latency_batch].numpy()

    def score(self, logits, y: torch.Tensor | None = None) -> float:
        t = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits, np.float32))
        v = self.fn(t.float(), self.y if y is None else y)
        try:
            return self.factor * float(v)
        except (TypeError, ValueError):
            raise PluginError(f"metric {self.name!r} returned a {type(v).__name__}; it must return one number") from None

    def engine(self, q: QuantizedModel) -> engines.Engine:
        return engines.select(q, self.verify_x, self.backends, self.threads, self.rounding)

    def measure(self, q: QuantizedModel, what: str = "evaluate") -> tuple[Measured, engines.Engine]:
        t = time.perf_counter()
        eng = self.engine(q)
        out = []
        for x, _ in self.batches:
            out.append(np.asarray(eng.fn(x.numpy()), np.float32))
            check_deadline(what)
        acc = self.score(np.concatenate(out))
        return Measured(acc, self.fp32 - acc, eng.name, eng.note, eng.rounding, time.perf_counter() - t), eng

    def latency_ms(self, eng: engines.Engine) -> float:
        """Median ms of one batch of ``latency_batch`` eval inputs on the engine that measured it."""
        return timing.median_ms(lambda: eng.fn(self.latency_x), self.repeats)


def calib_list(calib) -> list[torch.Tensor]:
    """Calibration inputs read once (the search quantizes many candidates from the same data)."""
    xs = [x for x in iter_batches(calib) if x.numel()]
    if not xs:
        from ..errors import CalibrationError

        raise CalibrationError("the calibration set is empty; pass at least one batch of representative inputs")
    return xs
