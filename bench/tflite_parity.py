"""LiteRT parity of the TFLite export: reference kernels exact, optimized kernels' LSB histogram.

For the three shipped digits nets (digits_cnn, resnet_digits, mobilenet_v2_digits, trained weights)
quantized with each recipe (default ``w8a8-pc`` and ``w4a8``, the INT4-weight file), the exported
``.tflite`` runs in LiteRT (``ai-edge-litert``) with

* ``reference`` kernels (``OpResolverType.BUILTIN_REF``): the plain C++ kernels, and
* ``optimized`` kernels (the builtin resolver without delegates: ruy / SIMD kernels), and for
  information LiteRT's ``default`` (builtin kernels plus the XNNPACK delegate, what
  ``Interpreter(model)`` gives),

on the digits test split (539 images) and on random images (uniform in the pixel range [0, 16]).
Each int8 output is compared with the integer interpreter in its gemmlowp rounding mode
(``interpreter.run(program, x, rounding="gemmlowp")``), in output LSBs. Printed per net and input
set: how many outputs (logits) and how many samples (all 10 logits) are identical, the histogram of
LSB differences, top-1 agreement and, on the test split, the accuracy of each engine. A last
probe runs one operator at a time (after a 1x1 conv) to show which op the optimized kernels round
differently.

    python bench/tflite_parity.py                            # both recipes, ~1-2 min on a quiet 2-core box
    python bench/tflite_parity.py --recipes w8a8-pc --random 200 --threads 2

``--real lite1`` instead measures EfficientNet-Lite1 on real photo crops (``examples/efficientnet_lite.py``,
64 calibration / 200 evaluation crops as ``bench/real_accuracy.py``) for ``--recipes`` (there:
default ``w8a16-res`` -- the TFLite 16x8 file -- and ``w8a8-pc``): top-1 agreement with fp32 of
the interpreter and of LiteRT (reference and optimized kernels), the LSB differences from the
interpreter, and LiteRT latency at batch 1 (optimized kernels and the default XNNPACK resolver,
the recipes interleaved in one run, NHWC files)::

    python bench/tflite_parity.py --real lite1               # ~10 min on a loaded 2-core box
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch

import edgequant as eq
from edgequant import interpreter
from edgequant.export.tflite import to_tflite
from edgequant.export.tflite.run import interpreter as litert_interpreter
from edgequant.export.tflite.run import run_tflite

NETS = ("digits_cnn", "resnet_digits", "mobilenet_v2_digits")


def lsb(y: np.ndarray, ref: np.ndarray, scale: float) -> np.ndarray:
    """Difference in output LSBs (both are dequantized int8 on the same grid, so this is exact)."""
    return np.round((y.astype(np.float64) - ref.astype(np.float64)) / scale).astype(np.int64)


def histogram(d: np.ndarray) -> str:
    c = Counter(d.reshape(-1).tolist())
    return " ".join(f"{k:+d}:{c[k]}" for k in sorted(c))


def compare(q, data: bytes, x: np.ndarray, labels: np.ndarray | None, threads: int) -> dict:
    ref = interpreter.run(q.program, x, rounding="gemmlowp")
    scale = float(q.program.output_qparams.scale)
    out = {"n": len(x), "outputs": ref.size}
    for kernels in ("reference", "optimized", "default"):
        it = litert_interpreter(data, kernels, num_threads=threads)
        y = run_tflite(it, x)
        d = lsb(y, ref, scale)
        out[kernels] = {
            "same_outputs": int((d == 0).sum()), "same_samples": int((d == 0).all(axis=1).sum()),
            "max_lsb": int(np.abs(d).max()), "hist": histogram(d),
            "top1_agree": float((y.argmax(1) == ref.argmax(1)).mean()) * 100,
            "acc": None if labels is None else float((y.argmax(1) == labels).mean()) * 100,
        }
    out["acc_ours"] = None if labels is None else float((ref.argmax(1) == labels).mean()) * 100
    return out


class _OneOp(torch.nn.Module):
    """A 1x1 conv (so every op below gets a quantized input) then the op under test."""

    def __init__(self, op: str) -> None:
        super().__init__()
        nn = torch.nn
        self.op, self.pre = op, nn.Conv2d(4, 16, 1)
        self.body = {"CONV_2D": nn.Conv2d(16, 8, 3, padding=1), "DEPTHWISE_CONV_2D": nn.Conv2d(16, 16, 3, padding=1, groups=16),
                     "ADD": nn.Conv2d(16, 16, 3, padding=1), "AVERAGE_POOL_2D": nn.AvgPool2d(2, 2),
                     "MAX_POOL_2D": nn.MaxPool2d(2, 2), "FULLY_CONNECTED": nn.Linear(16 * 8 * 8, 10)}.get(op)

    def forward(self, x):
        y = self.pre(x)
        if self.op == "ADD":
            return self.body(y) + y
        if self.op == "MEAN":
            return y.mean((2, 3))
        if self.op == "CONCATENATION":
            return torch.cat([y, torch.relu(y)], 1)
        if self.op == "FULLY_CONNECTED":
            return self.body(torch.flatten(y, 1))
        return self.body(y)


def probe_ops(n: int = 400) -> None:
    """Which operator the optimized kernels round differently: one op after a 1x1 conv, random data
    (FULLY_CONNECTED is the emitter's 1x1 CONV_2D form, the default)."""
    print(f"\nPer-operator probe (w8a8-pc, {n} random inputs, 1x1 conv + the op): outputs differing from the interpreter"
          " (the 1x1 conv's own differences included)")
    print(f"{'op':<20}{'reference':>10}{'optimized':>10}{'max LSB':>8}")
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "CONCATENATION", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN",
               "FULLY_CONNECTED"):
        torch.manual_seed(0)
        m = _OneOp(op).eval()
        x = torch.randn(2 * n, 4, 8, 8)
        q = eq.quantize(m, "w8a8-pc", [x[:n]])
        xs = x[n:].numpy()
        ref = interpreter.run(q.program, xs, rounding="gemmlowp")
        data, scale = to_tflite(q), float(q.program.output_qparams.scale)
        d = {k: lsb(run_tflite(data, xs, k), ref, scale) for k in ("reference", "optimized")}
        print(f"{op:<20}{100 * (d['reference'] != 0).mean():>9.2f}%{100 * (d['optimized'] != 0).mean():>9.2f}%"
              f"{int(np.abs(d['optimized']).max()):>8}")


def _latency(files: dict[str, bytes], x_nhwc: np.ndarray, kernels: str, threads: int, repeats: int) -> dict:
    """Median wall and process-CPU ms per batch-1 invoke of each file, interleaved rounds."""
    import statistics

    from speed_tflite import _runner

    fns = {k: _runner(d, kernels, threads, x_nhwc) for k, d in files.items()}
    for fn in fns.values():  # warm up
        fn(), fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(repeats):
        for k in (order if r % 2 == 0 else order[::-1]):
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k]()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]) * 1e3, statistics.median(cpu[k]) * 1e3) for k in fns}


def op_trace(q, x: np.ndarray, kernels: str) -> dict[str, tuple[int, int, int]]:
    """Which operators LiteRT computes differently from the interpreter: every instruction's kernel
    (``kernels.RUN``) applied to LiteRT's own input tensors, against LiteRT's output tensor.
    Returns op -> (instructions, elements differing, max difference in that tensor's LSB)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgequant.export.tflite import emit
    from edgequant.kernels import RUN
    from edgequant.kernels.context import KernelContext

    e = emit(q)
    resolver = {"reference": OpResolverType.BUILTIN_REF,
                "optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}[kernels]
    it = Interpreter(model_content=e.m.serialize(), experimental_op_resolver_type=resolver,
                     experimental_preserve_all_tensors=True)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    p = q.program

    def value(name: str) -> np.ndarray:  # the tensor in edgequant's layout
        form, idx = next(iter(e.where[name].items()))
        v = it.get_tensor(idx)
        return v.transpose(0, 3, 1, 2) if form == "nhwc" and v.ndim == 4 else v

    ctx, out = KernelContext("gemmlowp", p.tensors), {}
    for ins in p.instrs:
        ours = RUN[ins.op](ins, [value(t) for t in ins.inputs], ctx)
        d = np.abs(value(ins.output).reshape(ours.shape).astype(np.float64) - ours.astype(np.float64))
        if ins.op == "dequantize":
            d = np.round(d / float(p.tensors[ins.inputs[0]].qparams.scale))
        n, diff, mx = out.get(ins.op, (0, 0, 0))
        out[ins.op] = (n + 1, diff + int((d > 0).sum()), max(mx, int(d.max())))
    return out


def real_net(net: str, recipes: list[str], n_calib: int, n_eval: int, threads: int, repeats: int) -> None:
    """EfficientNet-Lite on real photo crops: agreement with fp32, LSB parity, latency per recipe."""
    import os
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "examples"))
    sys.path.insert(0, str(root / "bench"))
    os.environ["EQ_LITE"] = net
    import efficientnet_lite as L

    size = L.SIZES[net]
    model = L.model()
    cx, _ = L.crops(n_calib, seed=1, size=size)
    ex, _ = L.crops(n_eval, seed=0, size=size)
    x = ex.numpy()
    with torch.no_grad():
        fp32 = torch.cat([model(ex[i:i + 32]) for i in range(0, len(ex), 32)]).argmax(1).numpy()
    print(f"{net}: {n_calib} calibration / {n_eval} evaluation crops ({size}x{size}); agreement = top-1 equal to "
          f"fp32 (PyTorch); LSB = output (logit) LSB vs the interpreter (q.run, gemmlowp)", flush=True)
    hdr = (f"{'recipe':<11}{'engine':<22}{'agree %':>8}{'same %':>8}{'max LSB':>8}{'s':>7}  histogram (LSB:count)")
    lines, files = [], {}
    for recipe in recipes:
        t = time.perf_counter()
        q = eq.quantize(model, recipe, [cx[i:i + 16] for i in range(0, len(cx), 16)])
        t_q = time.perf_counter() - t
        files[recipe] = to_tflite(q, layout="nhwc")
        data = to_tflite(q)
        t = time.perf_counter()
        ref = interpreter.run(q.program, x, rounding="gemmlowp")
        lines.append(f"{recipe:<11}{'interpreter (q.run)':<22}{100 * (ref.argmax(1) == fp32).mean():>8.1f}{'':>16}"
                     f"{time.perf_counter() - t:>7.1f}  (quantize {t_q:.1f} s, file {len(data) / 1e6:.2f} MB)")
        scale = float(q.program.output_qparams.scale)
        for kernels in ("reference", "optimized"):
            t = time.perf_counter()
            y = run_tflite(litert_interpreter(data, kernels, num_threads=threads), x)
            d = lsb(y, ref, scale)
            lines.append(f"{recipe:<11}{'LiteRT ' + kernels:<22}{100 * (y.argmax(1) == fp32).mean():>8.1f}"
                         f"{100 * (d == 0).mean():>8.2f}{int(np.abs(d).max()):>8}{time.perf_counter() - t:>7.1f}  "
                         f"{histogram(d)}")
        print(lines[-3] + "\n" + lines[-2] + "\n" + lines[-1], flush=True)
        trace = op_trace(q, x[:1], "optimized")
        print(f"  {recipe}, optimized kernels per operator on crop 0 (op: instructions, elements differing from the "
              "interpreter's kernel on LiteRT's own inputs, max LSB): "
              + "; ".join(f"{op} {n}, {k}, {m}" for op, (n, k, m) in trace.items()), flush=True)
    print("\n" + hdr + "\n" + "-" * len(hdr) + "\n" + "\n".join(lines))
    x1 = np.ascontiguousarray(x[:1].transpose(0, 2, 3, 1))
    print(f"\nLiteRT latency, batch 1, {threads} thread(s), median of {repeats} interleaved rounds (ms; CPU = process "
          "CPU time per invoke)")
    for kernels in ("optimized", "default"):
        ms = _latency(files, x1, kernels, threads, repeats)
        print(f"  {kernels:<10}" + "   ".join(f"{k}: {w:.1f} ms (CPU {c:.1f})" for k, (w, c) in ms.items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=list(NETS))
    ap.add_argument("--recipes", nargs="+", help="default: w8a8-pc w4a8 (--real: w8a16-res w8a8-pc)")
    ap.add_argument("--random", type=int, default=1000, help="random images per net (uniform [0, 16])")
    ap.add_argument("--threads", type=int, default=1, help="LiteRT threads (the kernels' rounding does not depend on it)")
    ap.add_argument("--no-probe", action="store_true", help="skip the per-operator probe")
    ap.add_argument("--real", choices=["lite0", "lite1", "lite2"],
                    help="EfficientNet-Lite on real photo crops instead of the digits nets (recipes default: "
                         "w8a16-res w8a8-pc)")
    ap.add_argument("--calib", type=int, default=64, help="--real: calibration crops")
    ap.add_argument("--eval", type=int, default=200, help="--real: evaluation crops")
    ap.add_argument("--repeats", type=int, default=15, help="--real: latency rounds")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.real:
        real_net(args.real, args.recipes or ["w8a16-res", "w8a8-pc"], args.calib, args.eval, args.threads, args.repeats)
        return
    args.recipes = args.recipes or ["w8a8-pc", "w4a8"]
    from ai_edge_litert import __version__ as litert_version

    calib, test = eq.data.digits()
    xt = torch.cat([x for x, _ in test]).numpy()
    yt = torch.cat([y for _, y in test]).numpy()
    xr = np.random.default_rng(0).uniform(0.0, 16.0, (args.random, *xt.shape[1:])).astype(np.float32)
    print(f"ai-edge-litert {litert_version}, edgequant {eq.__version__}; interpreter rounding='gemmlowp'; "
          f"digits test split {len(xt)} images, {len(xr)} random images U[0,16]; LiteRT threads {args.threads}")
    rows = []
    for net in args.nets:
        model = getattr(eq.models, net)(pretrained=True)
        for recipe in args.recipes:
            t = time.perf_counter()
            q = eq.quantize(model, recipe, calib)
            data = to_tflite(q)
            for name, x, labels in (("test", xt, yt), ("random", xr, None)):
                r = compare(q, data, x, labels, args.threads)
                rows.append((net, recipe, name, r))
            print(f"  {net} {recipe}: {len(data)} bytes, {time.perf_counter() - t:.1f} s", flush=True)

    print("\nReference kernels (BUILTIN_REF) vs interpreter gemmlowp: identical outputs / samples")
    hdr = f"{'net':<20}{'recipe':<9}{'inputs':<8}{'outputs same':>16}{'samples same':>14}{'max LSB':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    for net, recipe, name, r in rows:
        ref = r["reference"]
        print(f"{net:<20}{recipe:<9}{name:<8}{ref['same_outputs']:>8}/{r['outputs']:<7}"
              f"{ref['same_samples']:>7}/{r['n']:<6}{ref['max_lsb']:>8}")

    for kernels, title in (("optimized", "Optimized kernels (builtin, no delegate)"),
                           ("default", "LiteRT default (builtin + XNNPACK delegate)")):
        print(f"\n{title} vs interpreter gemmlowp: LSB difference histogram of the logits")
        hdr = (f"{'net':<20}{'recipe':<9}{'inputs':<8}{'same %':>8}{'samples same':>14}{'max':>5}{'top1 agree':>11}"
               f"{'acc ours/this':>15}  histogram (LSB:count)")
        print(hdr + "\n" + "-" * len(hdr))
        for net, recipe, name, r in rows:
            o = r[kernels]
            acc = "-" if r["acc_ours"] is None else f"{r['acc_ours']:.2f}/{o['acc']:.2f}"
            print(f"{net:<20}{recipe:<9}{name:<8}{100 * o['same_outputs'] / r['outputs']:>8.2f}"
                  f"{o['same_samples']:>7}/{r['n']:<6}{o['max_lsb']:>5}{o['top1_agree']:>10.2f}%{acc:>15}  {o['hist']}")
    if not args.no_probe:
        probe_ops()
    exact = all(r["reference"]["max_lsb"] == 0 for *_, r in rows)
    print(f"\nreference kernels bit-exact on every net, recipe and input: {'yes' if exact else 'NO'}")


if __name__ == "__main__":
    main()
