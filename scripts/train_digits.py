"""Reproduce the shipped weights of the built-in digits models (seeded, CPU, ~1 minute).

    python scripts/train_digits.py            # all models
    python scripts/train_digits.py digits_cnn
"""
from __future__ import annotations

import json
import sys
import time

import torch
from safetensors.torch import save_file

import edgequant as eq
from edgequant.models import WEIGHTS_DIR
from edgequant.training import accuracy, train_classifier

RUNS = {  # name: (constructor, epochs, lr)
    "digits_cnn": (lambda: eq.models.digits_cnn(pretrained=False), 30, 3e-3),
    "resnet_digits": (lambda: eq.models.resnet_digits(pretrained=False), 30, 3e-3),
    "mobilenet_v2_digits": (lambda: eq.models.mobilenet_v2_digits(pretrained=False), 40, 3e-3),
    "digits_lstm": (lambda: eq.models.digits_lstm(pretrained=False), 40, 1e-2),
    "digits_gru": (lambda: eq.models.digits_gru(pretrained=False), 40, 1e-2),
}


def main(names: list[str]) -> None:
    torch.set_num_threads(2)
    _, test = eq.data.digits()
    info = {}
    for name in names:
        ctor, epochs, lr = RUNS[name]
        torch.manual_seed(0)
        model = ctor().train()
        t0 = time.time()
        train_classifier(model, eq.data.digits_train(seed=0), epochs=epochs, lr=lr, seed=0, log=None)
        acc = accuracy(lambda x: model(x), test)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(WEIGHTS_DIR / f"{name}.safetensors"))
        info[name] = {"test_top1": round(acc, 2), "epochs": epochs, "lr": lr, "seed": 0, "train_seconds": round(time.time() - t0, 1)}
        print(f"{name}: test top-1 {acc:.2f}%  ({time.time() - t0:.1f}s)")
    path = WEIGHTS_DIR / "trained.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(info)
    path.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or list(RUNS))
