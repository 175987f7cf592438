"""``finetune``: a small, plain QAT loop for users (and the sweep) without a loop of their own.

prepare -> Adam with a cosine schedule over ``epochs`` -> convert. Range parameters (LSQ steps,
PACT clips) train at the same rate as weights, without weight decay except PACT's clip, which
PACT regularises with L2. Batches move to the QAT module's device, so a CUDA model trains on CUDA.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..deadline import check_deadline
from ..errors import CalibrationError, RecipeError
from ..quantized import QuantizedModel
from ..recipes import Recipe, get_recipe
from .convert import convert
from .modules import QATModel
from .prepare import model_device, prepare

Progress = bool | Callable[[str], None]
DEFAULT_EPOCHS, DEFAULT_LR = 5, 1e-3


def _param_groups(qat_model: QATModel, weight_decay: float) -> list[dict]:
    ranges, clips, rest = [], [], []
    for name, p in qat_model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "scale":
            ranges.append(p)
        elif leaf in ("lo", "hi"):
            clips.append(p)
        else:
            rest.append(p)
    groups = [{"params": rest, "weight_decay": weight_decay}]
    if ranges:
        groups.append({"params": ranges, "weight_decay": 0.0})
    if clips:
        groups.append({"params": clips, "weight_decay": max(weight_decay, 1e-4)})
    return groups


def _batches(train: Iterable):
    for item in train:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise CalibrationError("finetune needs training batches of (x, y); got "
                                   f"{type(item).__name__}. Pass a DataLoader of (input, target) pairs")
        yield item[0], item[1]


def train_qat(qat_model: QATModel, train: Iterable, epochs: int = 5, lr: float = 1e-3, *, weight_decay: float = 0.0,
              loss_fn: Callable | None = None, progress: Progress = True, seed: int | None = 0) -> QATModel:
    """Train ``qat_model`` in place on (x, y) batches; returns it in eval mode.

    ``progress``: True shows a progress bar (rich), a callable receives one line per epoch, False
    is silent.
    """
    if epochs < 0 or lr <= 0:
        raise RecipeError(f"epochs={epochs}, lr={lr}: QAT needs epochs >= 0 and lr > 0")
    if seed is not None:
        torch.manual_seed(seed)
    device = model_device(qat_model)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    steps_per_epoch = len(train) if hasattr(train, "__len__") else None
    opt = torch.optim.Adam(_param_groups(qat_model, weight_decay), lr=lr)
    total = (steps_per_epoch or 1) * epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1))
    bar = _Bar(progress, total, qat_model.recipe.name)
    t0 = time.perf_counter()
    qat_model.train()
    with bar:
        for ep in range(epochs):
            loss_sum, n = 0.0, 0
            for x, y in _batches(train):
                check_deadline(f"QAT epoch {ep + 1}/{epochs}")
                x, y = x.to(device), y.to(device)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(qat_model(x), y)
                loss.backward()
                opt.step()
                if steps_per_epoch:
                    sched.step()
                loss_sum += float(loss.detach()) * len(y)
                n += len(y)
                bar.step(ep, epochs, loss_sum / max(n, 1))
            bar.epoch(f"epoch {ep + 1}/{epochs}  loss {loss_sum / max(n, 1):.4f}  {time.perf_counter() - t0:.1f}s")
    return qat_model.eval()


def finetune(model: nn.Module, recipe: str | Recipe, train: Iterable, calib: Iterable | None = None, *,
             epochs: int | None = None, lr: float | None = None, weight_decay: float = 0.0,
             loss_fn: Callable | None = None, progress: Progress = True, seed: int | None = 0,
             **settings) -> QuantizedModel:
    """Quantization-aware fine-tuning in one call: returns the converted ``QuantizedModel``.

    ``epochs``/``lr`` default to the recipe's options ``qat_epochs``/``qat_lr`` (tuned per recipe on
    the digits models, see bench/qat.py), else 5 and 1e-3. ``calib`` initialises activation
    ranges (default: ``train``); ``settings`` are ``QATConfig``
    fields (``act_range``, ``weight_range``, ``freeze_bn_step``, ``rounding``, ...). The trained
    QAT module is kept as ``result.qat_model`` for inspection.
    """
    r = get_recipe(recipe)
    epochs = int(r.option("qat_epochs", DEFAULT_EPOCHS)) if epochs is None else epochs
    lr = float(r.option("qat_lr", DEFAULT_LR)) if lr is None else lr
    qat_model = prepare(model, r, calib if calib is not None else train, **settings)
    if model_device(qat_model) != model_device(model):  # pragma: no cover - prepare moves it already
        qat_model.to(model_device(model))
    train_qat(qat_model, train, epochs, lr, weight_decay=weight_decay, loss_fn=loss_fn, progress=progress, seed=seed)
    q = convert(qat_model)
    q.qat_model = qat_model
    return q


class _Bar:
    """rich progress bar, or one line per epoch to a callable, or nothing."""

    def __init__(self, progress: Progress, total: int, what: str) -> None:
        self.log = progress if callable(progress) else None
        self.rich = None
        if progress is True:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.rich = Progress(TextColumn("QAT {task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False)
            self.task = self.rich.add_task(what, total=total, status="")

    def __enter__(self) -> "_Bar":
        if self.rich is not None:
            self.rich.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.rich is not None:
            self.rich.stop()

    def step(self, ep: int, epochs: int, loss: float) -> None:
        if self.rich is not None:
            self.rich.update(self.task, advance=1, status=f"epoch {ep + 1}/{epochs} loss {loss:.4f}")

    def epoch(self, line: str) -> None:
        if self.log is not None:
            self.log(line)
