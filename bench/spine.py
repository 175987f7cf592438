"""Int8 spine figures on the digits CNN: accuracy of the integer program, run-vs-simulate
agreement and size for each int8-family recipe.

    python bench/spine.py
"""
from __future__ import annotations

import time

import torch

import edgequant as eq
from edgequant.training import accuracy


def main() -> None:
    torch.set_num_threads(2)
    model = eq.models.digits_cnn(pretrained=True)
    calib, test = eq.data.digits()
    xs = torch.cat([x for x, _ in test])
    fp32 = accuracy(model, test)
    print(f"digits CNN, {len(xs)} test digits, fp32 top-1 {fp32:.2f}%")
    print(f"{'recipe':<9}{'top-1':>7}{'drop':>7}{'agree%':>8}{'maxLSB':>7}{'bytes':>9}{'ratio':>7}{'quant s':>8}")
    for name in ("fp32", "fp16", "dyn8", "w8a8", "w8a8-pc"):
        t = time.perf_counter()
        q = eq.quantize(model, name, calib)
        tq = time.perf_counter() - t
        acc = accuracy(q.run, test)
        agree = float((q.run(xs).argmax(1) == q.simulate(xs).argmax(1)).float().mean()) * 100
        lsb = "-"
        if q.recipe.mode == "static":
            lsb = str(int((q.run(xs, return_int=True).int() - q.simulate(xs, return_int=True).int()).abs().max()))
        print(f"{name:<9}{acc:>7.2f}{fp32 - acc:>7.2f}{agree:>8.2f}{lsb:>7}{q.size_bytes:>9}{q.compression:>7.3f}{tq:>8.2f}")


if __name__ == "__main__":
    main()
