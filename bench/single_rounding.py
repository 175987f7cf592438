"""Single vs double rounding of sub-8-bit requantizations: integer-program accuracy and run/simulate
agreement on the digits CNN, before and after (issue 3).

``lower`` records ``rounding: "single"`` on requantizations whose output is narrower than 8 bits
(``qmath.requant_rounding``); "before" is the same pipeline with that rule switched off
(``qmath.requant_rounding`` patched to record nothing), i.e. gemmlowp double rounding everywhere, as
before the change -- for QAT recipes that includes training through the double-rounding twin.

    python bench/single_rounding.py                       # the five recipes
    python bench/single_rounding.py w2a4-aciq w4a4        # some

Columns: top-1 of ``q.run`` (gemmlowp mode) on the 539 test digits (one digit = 0.19 points) and
argmax agreement of ``q.run`` with ``q.simulate``; ``moved``: share of the program's final integer
outputs (logits) that differ between before and after, over the test split.
"""
from __future__ import annotations

import sys
import time
from unittest import mock

import numpy as np
import torch

import edgequant as eq
from edgequant import qmath

RECIPES = ("w4a4", "w4a4-aciq", "w2a4-aciq", "w2a4-brecq", "w4a4-qat")


def build(model, name, calib, train):
    if name.endswith("-qat"):
        return eq.qat.finetune(model, name, train, calib, progress=False)
    return eq.quantize(model, name, calib)


def measure(q, xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, np.ndarray]:
    y_int = np.asarray(q.run(xs, return_int=True))
    run = np.asarray(q.run(xs)).argmax(1)
    sim = np.asarray(q.simulate(xs)).argmax(1)
    return 100 * np.mean(run == ys), 100 * np.mean(run == sim), y_int


def main() -> None:
    names = sys.argv[1:] or RECIPES
    calib, test = eq.data.digits()
    train = eq.data.digits_train(batch_size=64, seed=0)
    xs = torch.cat([x for x, _ in test]).numpy()
    ys = torch.cat([y for _, y in test]).numpy()
    model = eq.models.digits_cnn(pretrained=True)
    print(f"digits_cnn, {len(xs)} test digits; gemmlowp mode\n")
    print(f"{'recipe':<12} {'top-1 before':>12} {'after':>7} {'agree before':>13} {'after':>7} {'moved':>7} {'s':>5}")
    for name in names:
        t = time.perf_counter()
        torch.manual_seed(0)
        with mock.patch.object(qmath, "requant_rounding", lambda bits: None):
            qb = build(model, name, calib, train)
            assert not any("rounding" in i.attrs for i in qb.program.instrs)
            acc_b, agree_b, yb = measure(qb, xs, ys)
        torch.manual_seed(0)
        qa = build(model, name, calib, train)
        acc_a, agree_a, ya = measure(qa, xs, ys)
        n_single = sum(i.attrs.get("rounding") == "single" for i in qa.program.instrs)
        moved = 100 * np.mean(yb != ya)
        print(f"{name:<12} {acc_b:11.2f}% {acc_a:6.2f}% {agree_b:12.2f}% {agree_a:6.2f}% {moved:6.2f}% "
              f"{time.perf_counter() - t:5.0f}  ({n_single} single-rounding instrs)", flush=True)


if __name__ == "__main__":
    main()
