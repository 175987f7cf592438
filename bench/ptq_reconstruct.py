"""Reconstruction PTQ vs the analytic low-bit methods, on nets trained on the real digits data by
scripts/train_digits.py: mobilenet_v2_digits (depthwise, ReLU6, inverted residuals) and digits_cnn.

    python bench/ptq_reconstruct.py                              # both nets, W4A8 / W4A4 / W2A4
    python bench/ptq_reconstruct.py mobilenet_v2_digits --widths w4a4 --iterations 100

Methods per width: ``naive`` (min/max weights and activations, nearest rounding), ``aciq``
(Banner et al. full method: ACIQ clipping + per-channel bit allocation + bias correction; the
``w4a4-aciq`` recipe, re-targeted to the width), ``adaround`` (layer-wise learned rounding),
``brecq`` (block reconstruction) and ``brecq+qdrop`` (QDrop p=0.5), the last three at the recipe's
default iterations unless ``--iterations``. Opt-in: ``brecq+keep`` is BRECQ with the papers' first
and last layers at 8 bits (``first_last_bits=8``: weights, network input and logits) and every
depthwise conv's weights at 4 bits (``LayerOverride`` per depthwise module, found from the graph:
groups == input channels > 1), the mixed-width answer to 2-bit depthwise kernels of 9 weights:

    python bench/ptq_reconstruct.py mobilenet_v2_digits --widths w2a4 --methods brecq,brecq+keep

Columns: ``top-1`` of the integer program (``q.run``, gemmlowp rounding, the spec) on the 539 test
digits (one digit = 0.19 points); ``agree``: top-1 agreement of ``q.run`` with the fp32 model;
``run~sim``: argmax agreement of ``q.run`` with ``q.simulate`` (same rounding), and ``1-round``
the same with ``rounding="onnxruntime"`` (single rounding); ``s``: seconds ``quantize`` took;
``SQNR``: dB of the program's logits against the fp32 logits over the test split;
``vs ACIQ``: test digits only this method gets right / only the ACIQ full method gets right, with the
exact McNemar p-value of that split, and the digits whose logits land closer to fp32 than ACIQ's
(out of those that differ) with the sign test's p-value (small p: not test-set luck). With 539
digits and ACIQ near fp32, top-1 alone cannot separate methods; the logit error can.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
import warnings

import numpy as np
import torch

import edgequant as eq
from edgequant.api import capture_prepared
from edgequant.recipes import LayerOverride, TensorSpec, get_recipe
from edgequant.reconstruct import make_recipe

MODELS = ("mobilenet_v2_digits", "digits_cnn")
WIDTHS = {"w4a8": (4, 8), "w4a4": (4, 4), "w2a4": (2, 4)}


def _width(r, name: str, wb: int, ab: int):
    return dataclasses.replace(r, name=name, weights=dataclasses.replace(r.weights, bits=wb),
                               activations=dataclasses.replace(r.activations, bits=ab))


def depthwise_modules(model, example: torch.Tensor) -> list[str]:
    g = capture_prepared(model, example)
    by = g.by_name()
    return [n.module for n in g.nodes if n.op == "conv" and n.attrs.get("groups", 1) > 1
            and n.attrs["groups"] == by[n.inputs[0]].shape[1]]


def methods(wb: int, ab: int, iterations: int | None, depthwise: list[str] = ()) -> dict:
    tag = f"w{wb}a{ab}"
    kw = {"iterations": iterations} if iterations else {}
    keep = tuple(LayerOverride(m, weight_bits=max(wb, 4)) for m in depthwise)
    return {
        "naive": _width(get_recipe("w4a4"), f"{tag}-naive", wb, ab),
        "aciq": _width(get_recipe("w4a4-aciq"), f"{tag}-aciq", wb, ab),
        "adaround": make_recipe(wb, ab, "adaround", **kw),
        "brecq": make_recipe(wb, ab, "brecq", **kw),
        "brecq+qdrop": make_recipe(wb, ab, "brecq", qdrop=0.5, **kw),
        "brecq+keep": make_recipe(wb, ab, "brecq", name=f"{tag}-brecq-keep", overrides=keep, first_last_bits=8, **kw),
    }


def mcnemar_p(wins: int, losses: int) -> float:
    """Exact two-sided McNemar test: how likely a split at least this lopsided of the digits only one
    of two methods gets right is, if neither method were better (binomial, p = 1/2)."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=list(MODELS))
    ap.add_argument("--widths", default=",".join(WIDTHS))
    ap.add_argument("--methods", default="naive,aciq,adaround,brecq,brecq+qdrop")
    ap.add_argument("--iterations", type=int, default=None, help="per layer (adaround) / per block (brecq)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 when running nets in parallel)")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(a.threads)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores; "
          f"torch threads {a.threads}; iterations {a.iterations or 'recipe defaults'}", flush=True)
    calib, test = eq.data.digits()
    xs = torch.cat([x for x, _ in test]).numpy()
    ys = torch.cat([y for _, y in test]).numpy()
    for name in a.models:
        model = getattr(eq.models, name)(pretrained=True)
        with torch.no_grad():
            ref_logits = model(torch.from_numpy(xs)).numpy().astype(np.float64)
        ref = ref_logits.argmax(1)
        print(f"\n{name}: fp32 top-1 {100 * np.mean(ref == ys):.2f}% on {len(ys)} test digits"
              f" (iterations: {a.iterations or 'recipe default'})", flush=True)
        print(f"{'width':<6}{'method':<13}{'top-1':>7}{'agree':>7}{'SQNR':>6}{'run~sim':>8}{'1-round':>8}{'s':>7}"
              f"  vs ACIQ: digits only this / only ACIQ right (McNemar p); digits whose logits are closer to fp32 (sign p)",
              flush=True)
        for w in a.widths.split(","):
            wb, ab = WIDTHS[w]
            aciq_right = aciq_err = None
            for m, r in methods(wb, ab, a.iterations, depthwise_modules(model, torch.from_numpy(xs[:2]))).items():
                if m not in a.methods.split(","):
                    continue
                t = time.perf_counter()
                q = eq.quantize(model, r, calib)
                tq = time.perf_counter() - t
                logits = np.asarray(q.run(xs), np.float64)
                run = logits.argmax(1)
                err = np.sum((logits - ref_logits) ** 2, axis=1)  # per digit
                sqnr = 10 * math.log10(np.sum(ref_logits ** 2) / max(np.sum(err), 1e-30))
                sim = np.asarray(q.simulate(xs)).argmax(1)
                run1 = np.asarray(q.run(xs, rounding="onnxruntime")).argmax(1)
                sim1 = np.asarray(q.simulate(xs, rounding="onnxruntime")).argmax(1)
                right = run == ys
                versus = ""
                if m == "aciq":
                    aciq_right, aciq_err = right, err
                elif aciq_right is not None:
                    wins, losses = int(np.sum(right & ~aciq_right)), int(np.sum(~right & aciq_right))
                    closer, farther = int(np.sum(err < aciq_err)), int(np.sum(err > aciq_err))
                    versus = (f"  +{wins}/-{losses} (p={mcnemar_p(wins, losses):.3f}); "
                              f"{closer}/{closer + farther} (p={mcnemar_p(closer, farther):.1e})")
                print(f"{w:<6}{m:<13}{100 * np.mean(right):>7.2f}{100 * np.mean(run == ref):>7.2f}{sqnr:>6.1f}"
                      f"{100 * np.mean(run == sim):>8.2f}{100 * np.mean(run1 == sim1):>8.2f}{tq:>7.1f}{versus}", flush=True)


if __name__ == "__main__":
    main()
