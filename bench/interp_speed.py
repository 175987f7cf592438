"""Reference interpreter speed vs float PyTorch on a ResNet-18-shaped net (ImageNet input).

    python bench/interp_speed.py [--batch 1] [--repeats 7] [--threads 2]

Prints the median latency of each, measured interleaved in one run, and their ratio
(goal: interpreter <= 2x float PyTorch eager).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import edgequant as eq
from edgequant import interpreter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", default="w8a8-pc")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = eq.models.randomize_bn(eq.models.resnet18()).eval()
    calib = [torch.randn(4, 3, 224, 224) for _ in range(2)]
    t0 = time.perf_counter()
    q = eq.quantize(model, args.recipe, calib)
    t_quant = time.perf_counter() - t0
    x = torch.randn(args.batch, 3, 224, 224)
    xn = x.numpy()
    with torch.no_grad():
        model(x)  # warm-up
    interpreter.run(q.program, xn)
    t_torch, t_interp = [], []
    for _ in range(args.repeats):  # interleaved so machine noise hits both alike
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        t_torch.append(time.perf_counter() - t)
        t = time.perf_counter()
        interpreter.run(q.program, xn)
        t_interp.append(time.perf_counter() - t)
    mt, mi = statistics.median(t_torch), statistics.median(t_interp)
    print(f"ResNet-18 224x224 batch {args.batch}, {args.threads} threads, recipe {args.recipe} (quantize took {t_quant:.1f}s)")
    print(f"{'runtime':<34}{'median ms':>10}")
    print(f"{'PyTorch fp32 eager':<34}{mt * 1e3:>10.1f}")
    print(f"{'edgequant interpreter (int8)':<34}{mi * 1e3:>10.1f}")
    print(f"ratio interpreter / PyTorch: {mi / mt:.2f}x  (goal <= 2.0x)")


if __name__ == "__main__":
    main()
