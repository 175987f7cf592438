"""Sweep sample counts sized from the model's activation footprint rather than fixed numbers.

A batch of 64 for latency and 256 samples for the per-layer studies cost nothing on the digits CNN
and gigabytes (and minutes per row) on a 240x240 ImageNet network. The footprint is the peak of the
live float32 activations of one sample in the captured graph (walked in order, every tensor freed
after its last reader), known before any row is quantized, so every row uses the same counts.
Small models keep the configured counts: the caps only bite when a sample is large.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph

LATENCY_MB = 64  # activations of one latency batch
LAYER_MB = 192  # activations of the verification / per-layer SQNR sample
SENSITIVITY_MB = 192  # activations of the sensitivity study's sample
MIN_LAYER_SAMPLES = 16  # fewer makes the verification and the SQNR figures too noisy


def bytes_per_sample(graph: Graph) -> int:
    """Peak live float32 activation bytes of one sample through ``graph``."""
    last = {}
    for i, n in enumerate(graph.nodes):
        for t in n.inputs:
            last[t] = i
    last[graph.output] = len(graph.nodes)
    live: dict[str, int] = {}
    peak = 0
    for i, n in enumerate(graph.nodes):
        shape = tuple(n.shape)
        live[n.name] = 4 * (int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1)
        peak = max(peak, sum(live.values()))
        for t in set(n.inputs):
            if last.get(t) == i:
                live.pop(t, None)
    return int(peak)


@dataclass(frozen=True)
class Sizes:
    bytes_per_sample: int
    latency_batch: int
    layer_samples: int
    sensitivity_samples: int | None  # None: the whole evaluation set

    def report(self) -> dict:
        return {"activation_bytes_per_sample": self.bytes_per_sample, "latency_batch": self.latency_batch,
                "layer_samples": self.layer_samples, "sensitivity_samples": self.sensitivity_samples}


def size(graph: Graph, latency_batch: int, layer_samples: int, n_eval: int) -> Sizes:
    """Counts for this model: the configured ones, capped by the activation budgets above."""
    b = max(bytes_per_sample(graph), 1)
    cap = lambda mb, floor: max(floor, int(mb * 2**20 // b))  # noqa: E731
    sens = cap(SENSITIVITY_MB, MIN_LAYER_SAMPLES)
    return Sizes(b, max(1, min(latency_batch, cap(LATENCY_MB, 1))),
                 max(1, min(layer_samples, cap(LAYER_MB, MIN_LAYER_SAMPLES))),
                 None if sens >= n_eval else sens)
