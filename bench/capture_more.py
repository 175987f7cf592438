"""MobileNetV3/EfficientNet-style nets (hardswish, SiLU, GELU, squeeze-and-excitation gates) as integer
programs: accuracy on digits, run/simulate agreement, ONNX Runtime parity.

The net is the one of tests/test_capture_more.py (its PLUGIN), trained 2 epochs on
``eq.data.digits_train()`` (one thread) per activation variant, then quantized w8a8-pc on the
calibration split. Columns: top-1 of the fp32 model and of ``q.run`` on the 539 test digits; argmax
agreement and max |integer difference| of ``q.run`` vs ``q.simulate`` (gemmlowp); ONNX (QDQ file,
ORT all optimizations) vs the interpreter's "onnxruntime" mode: max |integer difference| and share
of output integers equal.

    python bench/capture_more.py
"""
from __future__ import annotations

import ast
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import edgequant as eq
from edgequant.training import accuracy, train_classifier

VARIANTS = (("hardswish", "hardsigmoid"), ("silu", "sigmoid"), ("gelu", "tanh"))


def _plugin() -> dict:
    tree = ast.parse((Path(__file__).parents[1] / "tests" / "test_capture_more.py").read_text())
    src = next(n.value.args[0].value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "PLUGIN")
    ns: dict = {}
    exec(textwrap.dedent(src), ns)
    return ns


def main() -> None:
    net = _plugin()["MiniV3"]
    calib, test = eq.data.digits()
    x = torch.cat([b for b, _ in test]).numpy()
    print(f"{'net':<22} {'fp32':>6} {'w8a8-pc':>8} {'run=sim':>8} {'max|d|':>6} {'ORT max|d|':>10} {'ORT equal':>9} {'time':>6}")
    for act, gate in VARIANTS:
        t = time.time()
        torch.set_num_threads(1)
        model = train_classifier(net(act, gate, w=12), eq.data.digits_train(batch_size=32), epochs=2, lr=5e-3, log=None)
        q = eq.quantize(model, "w8a8-pc", calib, max_calib_samples=256)
        fp32, acc = accuracy(model, test), accuracy(q.run, test)
        ri, si = q.run(x, return_int=True).astype(np.int64), np.asarray(q.simulate(x, return_int=True)).astype(np.int64)
        with tempfile.TemporaryDirectory() as d:
            q.export(Path(d) / "m.onnx", format="onnx")
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            y = ort.InferenceSession(str(Path(d) / "m.onnx"), so, providers=["CPUExecutionProvider"]).run(None, {q.program.input: x})[0]
        qp = q.program.output_qparams
        got = np.round(y.astype(np.float64) / float(qp.scale)).astype(np.int64) + int(qp.zero_point)
        ref = q.run(x, rounding="onnxruntime", return_int=True).astype(np.int64)
        print(f"{act + '/' + gate:<22} {fp32:6.2f} {acc:8.2f} {100 * np.mean(ri.argmax(1) == si.argmax(1)):7.2f}% "
              f"{int(np.abs(ri - si).max()):6d} {int(np.abs(got - ref).max()):10d} {100 * np.mean(got == ref):8.2f}% "
              f"{time.time() - t:5.1f}s")


if __name__ == "__main__":
    main()
