"""The front door: ``quantize(model, recipe, calib)``."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from .calibrate import calibrate, check_finite, first_batch
from .capture import capture
from .ir import Graph
from .lower import lower
from .passes import prepare
from .quantized import QuantizedModel
from .recipes import Recipe, get_recipe

# Post-training algorithms that need the graph, the recipe, activation qparams and calibration data
# (e.g. empirical bias correction). Each is ``step(graph, recipe, act_qp, calib) -> graph`` and is
# applied in order before lowering; a step does nothing unless the recipe asks for it.
PTQ_STEPS: list = []


def float_param_bytes(graph: Graph) -> int:
    """fp32 bytes of the (BN-folded) weights and biases: the baseline for size ratios."""
    return int(sum(4 * v.size for n in graph.nodes if n.op in ("conv", "linear") for v in n.params.values()))


def capture_prepared(model: torch.nn.Module, example: torch.Tensor) -> Graph:
    return prepare(capture(model, example))


def quantize(model: torch.nn.Module, recipe: str | Recipe = "w8a8-pc", calib: Iterable | None = None,
             example_input: torch.Tensor | None = None, max_calib_samples: int | None = None) -> QuantizedModel:
    """Quantize ``model`` with ``recipe`` (a name like ``"w8a8-pc"`` or a ``Recipe``).

    ``calib`` yields inputs or (x, y) batches (a DataLoader works); static recipes need it. The
    user's model is not modified.
    """
    r = get_recipe(recipe)
    if example_input is None:
        if calib is None:
            from .errors import CalibrationError

            raise CalibrationError(f"recipe {r.name!r} needs calibration data or an example_input to trace the model")
        example_input = first_batch(calib)
    example_input = torch.as_tensor(np.asarray(example_input)) if not isinstance(example_input, torch.Tensor) else example_input
    check_finite(example_input, "example input")
    graph = capture_prepared(model, example_input[:2])
    act_qp = None
    if r.mode == "static":
        if calib is None:
            from .errors import CalibrationError

            raise CalibrationError(f"recipe {r.name!r} quantizes activations statically and needs calibration data")
        act_qp = calibrate(graph, r, calib, max_samples=max_calib_samples)
    for step in PTQ_STEPS:
        graph = step(graph, r, act_qp, calib)
    program = lower(graph, r, act_qp)
    return QuantizedModel(program, r, graph, float_param_bytes(graph))
