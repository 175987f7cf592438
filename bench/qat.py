"""Quantization-aware training vs the best post-training result at the same widths.

For the digits CNN and resnet_digits: fp32, then at W4A4, W2A2 and W1A1 (XNOR) every post-training
recipe listed below and the QAT recipe fine-tuned with ``eq.qat.finetune`` (its defaults: the
epochs and learning rate the recipe names). Accuracy is always the integer program's (``q.run``);
"agree" is the argmax agreement of the trained QAT module with the converted program; QAT time
is prepare + training + convert, wall clock and process CPU seconds.

    python bench/qat.py                                   # both models, all widths
    python bench/qat.py --models digits_cnn --widths W4A4 # the "under 2 minutes" figure
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import edgequant as eq
from edgequant.recipes import RECIPES, Recipe, TensorSpec, low_bit_weights
from edgequant.reconstruct import make_recipe
from edgequant.training import accuracy


def _a2(base: str, name: str) -> Recipe:
    """``base`` with 2-bit activations (same observer)."""
    r = RECIPES[base]
    return dataclasses.replace(r, name=name, activations=dataclasses.replace(r.activations, bits=2))


def ptq_recipes(width: str) -> list[Recipe]:
    """Every post-training candidate at ``width``; the table reports the best."""
    if width == "W4A4":
        return [RECIPES[n] for n in ("w4a4", "w4a4-aciq", "w4a4-brecq")]
    if width == "W2A2":
        minmax = Recipe("w2a2", "static", weights=low_bit_weights(2), activations=TensorSpec(bits=2),
                        description="2-bit weights and activations, min/max")
        ternary = dataclasses.replace(_a2("w2a8-ternary", "w2a2-ternary"), overrides=(), options=(("weight_method", "ternary"),))
        return [minmax, _a2("w2a4-aciq", "w2a2-aciq"), ternary, make_recipe(2, 2, "brecq")]
    return [RECIPES["w1a1-xnor"]]


def top1(logits, labels) -> float:
    return float((logits.argmax(1) == labels).mean()) * 100


QAT_RECIPE = {"W4A4": "w4a4-qat", "W2A2": "w2a2-qat", "W1A1": "w1a1-xnor-qat"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="digits_cnn,resnet_digits")
    ap.add_argument("--widths", default="W4A4,W2A2,W1A1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ptq", action="store_true", help="QAT rows only")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    calib, test = eq.data.digits()
    train = eq.data.digits_train(batch_size=64, seed=0)
    xs, ys = torch.cat([x for x, _ in test]), torch.cat([y for _, y in test]).numpy()
    rows = []
    for mname in a.models.split(","):
        model = getattr(eq.models, mname)(pretrained=True)
        fp32 = accuracy(model, test)
        print(f"\n{mname}: fp32 top-1 {fp32:.2f}% ({len(xs)} test digits)", flush=True)
        for width in a.widths.split(","):
            best = ("-", float("nan"))
            if not a.no_ptq:
                for r in ptq_recipes(width):
                    t = time.perf_counter()
                    q = eq.quantize(model, r, calib)
                    acc = top1(q.run(xs.numpy()), ys)
                    print(f"  PTQ {width} {r.name:<14} {acc:6.2f}%  ({time.perf_counter() - t:.0f}s)", flush=True)
                    if not acc <= best[1]:
                        best = (r.name, acc)
            name = QAT_RECIPE[width]
            t, c = time.perf_counter(), time.process_time()
            q = eq.qat.finetune(model, name, train, calib, progress=False)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            got = q.run(xs.numpy())
            acc = top1(got, ys)
            with torch.no_grad():
                agree = float((q.qat_model(xs).argmax(1).numpy() == got.argmax(1)).mean()) * 100
            r = eq.get_recipe(name)
            print(f"  QAT {width} {name:<14} {acc:6.2f}%  agree {agree:.2f}%  {wall:.0f}s wall, {cpu:.0f}s CPU "
                  f"({r.option('qat_epochs')} epochs, lr {r.option('qat_lr')})", flush=True)
            rows.append((mname, width, fp32, best, acc, agree, wall, cpu))
    print("\n| model | width | fp32 | best PTQ (recipe) | QAT | QAT - fp32 | QAT - best PTQ | agree | QAT wall s | QAT CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mname, width, fp32, (bname, bacc), acc, agree, wall, cpu in rows:
        ptq, gain = (f"{bacc:.2f} ({bname})", f"{acc - bacc:+.2f}") if bacc == bacc else ("-", "-")
        print(f"| {mname} | {width} | {fp32:.2f} | {ptq} | {acc:.2f} | {acc - fp32:+.2f} | {gain} "
              f"| {agree:.2f} | {wall:.0f} | {cpu:.0f} |")
    print(f"\ntorch threads {a.threads}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
