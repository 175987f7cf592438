"""Calibration: stream batches through the float graph and let observers pick activation ranges.

Only fixed-size observer state is kept, so memory does not grow with the number of samples.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Iterator

import numpy as np
import torch

from .errors import CalibrationError
from .graph_exec import GraphModule
from .ir import Graph, Node
from .observers import make_observer
from .qmath import QParams
from .recipes import Recipe

# Nodes whose output gets its own activation qparams; the others inherit their input's.
OBSERVED_OPS = ("input", "conv", "linear", "add", "cat", "mean")


def iter_batches(data, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Inputs from a DataLoader of (x, y) or x, a list of tensors, or one (N, ...) tensor."""
    if isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    if isinstance(data, np.ndarray):
        yield from iter_batches(torch.from_numpy(data), batch_size)
        return
    try:
        it = iter(data)
    except TypeError:
        raise CalibrationError(f"calibration data must be iterable (DataLoader, list of tensors, or a tensor); got {type(data).__name__}") from None
    for item in it:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise CalibrationError(f"calibration batches must be tensors or (x, y) tuples; got {type(x).__name__}")
        yield x


def check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise CalibrationError(f"{what} contains {bad} NaN/inf values; clean or filter those samples before quantizing")


def first_batch(data) -> torch.Tensor:
    for x in iter_batches(data):
        if x.numel() > 0:
            return x
    raise CalibrationError("the calibration set is empty; pass at least one batch of representative inputs")


def activation_spec_for(node: Node, recipe: Recipe) -> tuple[int, dict]:
    _, ab = recipe.layer_bits(node.module)
    spec = recipe.activations
    return ab, {"bits": ab, "signed": True, "symmetric": spec.symmetric, "narrow": spec.narrow}


def calibrate(graph: Graph, recipe: Recipe, data: Iterable, max_samples: int | None = None) -> dict[str, QParams]:
    """Observe every node in ``OBSERVED_OPS`` over ``data``; returns qparams per node name."""
    observers = {}
    for n in graph.nodes:
        if n.op in OBSERVED_OPS:
            _, kw = activation_spec_for(n, recipe)
            observers[n.name] = make_observer(recipe.activations.observer, **kw)
    gm = GraphModule(graph)
    seen = 0

    def hook(node: Node, y: torch.Tensor) -> torch.Tensor:
        if node.name in observers:
            observers[node.name].update(y.detach().numpy())
        return y

    with torch.no_grad():
        for x in iter_batches(data):
            if x.numel() == 0:
                continue
            check_finite(x, f"calibration batch {seen // max(x.shape[0], 1)}")
            gm(x.float(), hook)
            seen += x.shape[0]
            if max_samples is not None and seen >= max_samples:
                break
    if seen == 0:
        raise CalibrationError("the calibration set is empty; pass at least one batch of representative inputs")
    if seen == 1:
        warnings.warn("calibrating on a single sample: activation ranges will fit that sample only and "
                      "clip others; use 100+ representative samples", stacklevel=2)
    return {name: ob.qparams() for name, ob in observers.items()}
