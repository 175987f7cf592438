"""``prepare``: model + recipe + calibration data -> a QAT ``nn.Module`` for the user's own loop.

The model is captured once (``torch.export``), BN folding and activation fusion decide which
tensors the program will hold as integers, calibration initialises every activation range, and
the result is returned in training mode on the model's device.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..calibrate import calibrate, check_finite, first_batch, iter_batches
from ..capture import capture
from ..errors import CalibrationError, RecipeError
from ..lowbit.edges import recalibrate_edges
from ..passes import prepare as prepare_graph
from ..recipes import Recipe, get_recipe
from .config import QATConfig
from .modules import QATModel


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def prepare(model: torch.nn.Module, recipe: str | Recipe = "w4a4-qat", calib: Iterable | None = None, *,
            example_input: torch.Tensor | None = None, max_calib_samples: int | None = None,
            **settings) -> QATModel:
    """Insert fake-quant for ``recipe`` into a copy of ``model``; returns a trainable ``nn.Module``.

    ``calib`` yields inputs or (x, y) batches (a DataLoader works) and initialises the activation
    ranges with the recipe's observer. ``settings`` override the recipe's QAT options, see
    ``QATConfig`` (``act_range``, ``weight_range``, ``freeze_bn_step``, ...). ``model`` itself is
    not modified. Train the result, then ``edgequant.qat.convert`` it.
    """
    r = get_recipe(recipe)
    if r.mode != "static":
        raise RecipeError(f"recipe {r.name!r} is {r.mode}; quantization-aware training needs a static (integer) "
                          "recipe such as 'w4a4-qat', 'w2a2-qat' or 'w8a8-pc'")
    if calib is None:
        raise CalibrationError(f"recipe {r.name!r}: QAT initialises activation ranges from calibration data; pass calib")
    cfg = QATConfig.from_recipe(r, **settings)
    device = model_device(model)
    example = first_batch(calib) if example_input is None else torch.as_tensor(example_input)
    check_finite(example.cpu(), "example input")
    was_training = model.training
    model.eval()
    try:
        raw = capture(model, example[:2].to(device))
    finally:
        model.train(was_training)
    prepared = prepare_graph(raw)
    act_qp = calibrate(prepared, r, (x.detach().cpu() for x in iter_batches(calib)), max_samples=max_calib_samples)
    recalibrate_edges(prepared, r, act_qp, (x.detach().cpu() for x in iter_batches(calib)))  # first/last-layer widths
    return QATModel(raw, prepared, r, act_qp, cfg).to(device).train()
