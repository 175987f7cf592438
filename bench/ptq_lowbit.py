"""Below 8 bits without retraining: the ablation of Banner et al. (arXiv 1810.05723, Table 1 style)
and the low-bit recipes, on the digits CNN and on resnet_digits (trained by scripts/train_digits.py
on the real digits data).

    python bench/ptq_lowbit.py                 # both models
    python bench/ptq_lowbit.py digits_cnn      # one

Accuracy is that of the integer program (``q.run``, gemmlowp rounding: the spec). Extra columns:
``1-round``: the same program requantized with one rounding (``rounding="onnxruntime"``, float32
multiply) -- the gap to ``top-1`` is what gemmlowp's double rounding costs at small accumulators;
``agree``: argmax agreement of ``q.run`` with the float fake-quant ``q.simulate``; ``ratio``: packed
bytes / fp32 bytes of the conv/linear parameters. The test split has 539 digits: one digit is
0.19 points. ``naive, f/l 8`` / ``3, f/l 8``: naive / all three with the first and last layers
(and the network input and the logits) at 8 bits (option ``first_last_bits``); not ablation rows.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings

import numpy as np
import torch

import edgequant as eq
from edgequant.lowbit.ablation import ablation_recipes

MODELS = ("digits_cnn", "resnet_digits")
NAMED = ("w8a8-pc", "w4a8", "w4a4", "w4a4-aciq", "w2a4-aciq", "w2a8-ternary", "w1a8-xnor", "w1a1-xnor")


def _key(r: eq.Recipe) -> str:
    d = r.to_dict()
    d.pop("name"), d.pop("description")
    return json.dumps(d, sort_keys=True)


class Bench:
    def __init__(self, model, calib, xs: np.ndarray, ys: np.ndarray) -> None:
        self.model, self.calib, self.xs, self.ys = model, calib, xs, ys
        self.cache: dict[str, dict] = {}

    def measure(self, recipe) -> dict:
        r = eq.recipes.get_recipe(recipe)
        k = _key(r)
        if k not in self.cache:
            t = time.perf_counter()
            q = eq.quantize(self.model, r, self.calib)
            tq = time.perf_counter() - t
            run = np.asarray(q.run(self.xs)).argmax(1)
            row = {"top1": 100 * np.mean(run == self.ys), "ratio": q.compression, "quant_s": tq}
            if r.mode == "static":
                one = np.asarray(q.run(self.xs, rounding="onnxruntime")).argmax(1)
                sim = np.asarray(q.simulate(self.xs)).argmax(1)
                row.update(one=100 * np.mean(one == self.ys), agree=100 * np.mean(run == sim))
            self.cache[k] = row
        return self.cache[k]


def fmt(name: str, m: dict, fp32: float) -> str:
    one = f"{m['one']:>8.2f}" if "one" in m else f"{'-':>8}"
    agree = f"{m['agree']:>7.2f}" if "agree" in m else f"{'-':>7}"
    return f"  {name:<14}{m['top1']:>7.2f}{m['top1'] - fp32:>+9.2f}{one}{agree}{m['ratio']:>7.3f}{m['quant_s']:>9.1f}"


def main(models: list[str]) -> None:
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    calib, test = eq.data.digits()
    xs = torch.cat([x for x, _ in test]).numpy()
    ys = torch.cat([y for _, y in test]).numpy()
    head = f"  {'':<14}{'top-1':>7}{'vs fp32':>9}{'1-round':>8}{'agree':>7}{'ratio':>7}{'quant s':>9}"
    t0 = time.perf_counter()
    for name in models:
        model = getattr(eq.models, name)(pretrained=True).eval()
        with torch.no_grad():
            fp32 = 100 * float(np.mean(model(torch.from_numpy(xs)).argmax(1).numpy() == ys))
        b = Bench(model, calib, xs, ys)
        print(f"\n{name}: fp32 top-1 {fp32:.2f}% on {len(xs)} test digits (1 digit = {100 / len(xs):.2f} pts)")
        for wb in (4, 2):
            print(f" W{wb}A4 ablation (per-channel symmetric weights, per-tensor activations)")
            print(head)
            rows = ablation_recipes(wb, 4)
            for row, r in rows.items():
                print(fmt(row, b.measure(r), fp32), flush=True)
            for row, label in (("naive", "naive, f/l 8"), ("all three", "3, f/l 8")):
                edge = dataclasses.replace(rows[row], options=rows[row].options + (("first_last_bits", 8),))
                print(fmt(label, b.measure(edge), fp32), flush=True)
        print(" named recipes")
        print(head)
        for r in NAMED:
            print(fmt(r, b.measure(r), fp32), flush=True)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
