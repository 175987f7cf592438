"""A small, plain, seeded training loop and accuracy evaluation (for the built-in models,
the repo's training scripts and QAT fine-tuning)."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from .deadline import check_deadline


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train_classifier(model: nn.Module, train: Iterable, epochs: int = 20, lr: float = 3e-3, seed: int = 0,
                     weight_decay: float = 1e-4, log: Callable[[str], None] | None = print) -> nn.Module:
    """Adam + cosine schedule + cross-entropy. Deterministic for a given seed on CPU."""
    seed_everything(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * len(train)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for ep in range(epochs):
        total, n = 0.0, 0
        for x, y in train:
            check_deadline(f"training epoch {ep + 1}/{epochs}")
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            n += len(y)
        if log:
            log(f"epoch {ep + 1}/{epochs}  loss {total / max(n, 1):.4f}")
    return model.eval()


def accuracy(predict: Callable[[torch.Tensor], torch.Tensor], data: Iterable, topk: int = 1) -> float:
    """Top-k accuracy in percent of ``predict(x) -> logits`` over (x, y) batches."""
    correct, total = 0, 0
    for x, y in data:
        out = predict(x)
        logits = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
        top = logits.topk(topk, dim=1).indices
        correct += int((top == y.view(-1, 1)).any(dim=1).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)
