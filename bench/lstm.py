"""Recurrent nets as integer programs (issue 17), measured in one run.

1. Accuracy on real data: the shipped ``digits_lstm`` / ``digits_gru`` (sklearn digits read row by
   row, 8 steps x 8 features; 539 test images) for fp32, fp16, dyn8, w8a8-pc and w4a8: the integer
   program's top-1 (interpreter), its drop from PyTorch fp32, run-vs-simulate argmax agreement, ONNX
   Runtime's argmax parity with the interpreter (default gemmlowp rounding) and ONNX Runtime's
   largest difference from the interpreter's ``rounding="onnxruntime"`` mode (0 = bit-exact); then
   the issue's done-when checks.
2. Coverage on random weights: 2-layer bidirectional LSTM/GRU (T 50, hidden 128) quantized w8a8-pc:
   argmax agreement with fp32, run/sim, ORT parity.
3. The gate tables' error against exact sigmoid/tanh on all 65536 int16 inputs, and that of gemmlowp's
   fixed-point sigmoid/tanh (TFLite's integer LSTM, used by every LSTM since the TFLite export).
3b. TFLite: the ``w8a8`` (per-tensor) LSTMs exported as UNIDIRECTIONAL_SEQUENCE_LSTM and run in
   LiteRT's reference kernels: top-1, argmax parity and largest difference from the interpreter
   (digits_lstm on the test split; a random 2-layer bidirectional LSTM, T 50, hidden 128).
4. Speed, side by side, one thread each: batch 1 and 32, sequence 50, 40 features, hidden 256 --
   PyTorch fp32, PyTorch's dynamically quantized LSTM/GRU (``quantize_dynamic``, the anchor), ours
   (w8a8-pc and dyn8) through ONNX Runtime, and the reference interpreter. Median of interleaved
   rounds (each round runs every variant in a fresh random order, one warm-up call then ``--burst``
   timed calls); ratios are medians of per-round ratios, so load on a shared box hits all alike.

    python bench/lstm.py             # ~3 min on a 2-core box
    python bench/lstm.py --quick     # fewer rounds
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

import edgequant as eq
from edgequant.backends import ort_session
from edgequant.export.onnx import to_onnx
from edgequant.kernels import fixedpoint16
from edgequant.kernels.rnn_lut import table_error
from edgequant.training import accuracy

RECIPES = ("fp32", "fp16", "dyn8", "w8a8", "w8a8-pc", "w4a8")


def _ort_int_diff(q, x: np.ndarray, yo: np.ndarray) -> str:
    """ONNX Runtime vs the interpreter's onnxruntime mode: max |diff| in output LSBs (integer programs)
    or in float units."""
    yi = q.run(x, rounding="onnxruntime")
    qp = q.program.output_qparams
    if qp is None:
        return f"{np.abs(yo - yi).max():.1e}"
    return f"{int(np.abs(np.round((yo - yi) / float(qp.scale))).max())} LSB"


def real_data() -> list[dict]:
    calib, test = eq.data.digits()
    xs = np.concatenate([x.numpy() for x, _ in test])
    rows = []
    print("## Accuracy on real data (sklearn digits, 539 test images, 512 calibration)\n")
    print("| model | recipe | top-1 % | drop | run/sim agree % | ORT argmax parity % | ORT vs interp (ort mode) | size B |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("digits_lstm", "digits_gru"):
        m = getattr(eq.models, name)(pretrained=True)
        with torch.no_grad():
            fp32 = accuracy(lambda x: m(x), test)
        print(f"| {name} | PyTorch fp32 | {fp32:.2f} | | | | | |")
        for r in RECIPES:
            q = eq.quantize(m, r, calib)
            acc = accuracy(lambda x: torch.from_numpy(q.run(x.numpy())), test)
            y, s = q.run(xs), np.asarray(q.simulate(xs))
            yo = ort_session(q, threads=1).run(None, {q.program.input: xs})[0]
            row = {"model": name, "recipe": r, "acc": acc, "drop": fp32 - acc, "sim": 100 * (y.argmax(1) == s.argmax(1)).mean(),
                   "ort": 100 * (yo.argmax(1) == y.argmax(1)).mean(), "ortdiff": _ort_int_diff(q, xs, yo), "size": q.size_bytes}
            rows.append(row)
            print(f"| {name} | {r} | {acc:.2f} | {row['drop']:+.2f} | {row['sim']:.1f} | {row['ort']:.1f} | {row['ortdiff']} "
                  f"| {row['size']} |")
    print("\nDone-when (issue 17):")
    for row in rows:
        checks = []
        if row["recipe"] == "w8a8-pc":
            checks.append(("w8a8-pc drop <= 1 point", row["drop"] <= 1.0))
        if row["recipe"] == "dyn8":
            checks.append(("dyn8 drop <= 0.5 point", row["drop"] <= 0.5))
        if row["recipe"] in ("w8a8-pc", "dyn8", "w4a8"):
            checks += [("run/sim >= 99%", row["sim"] >= 99.0), ("ORT parity >= 99%", row["ort"] >= 99.0)]
        for what, ok in checks:
            print(f"- {row['model']} {row['recipe']}: {what}: {'PASS' if ok else 'FAIL'}")
    return rows


def coverage() -> None:
    print("\n## Coverage: random-weight 2-layer bidirectional nets (T 50, 40 features, hidden 128), w8a8-pc\n")
    print("| net | agree with fp32 % | run/sim % | ORT parity % | ORT vs interp (ort mode) |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(1)
    calib, x = torch.randn(256, 50, 40, generator=g), torch.randn(256, 50, 40, generator=g)
    for cell in ("lstm", "gru"):
        m = eq.models.sequence_rnn(cell, features=40, hidden=128, layers=2, bidirectional=True)
        q = eq.quantize(m, "w8a8-pc", [calib])
        xs = x.numpy()
        with torch.no_grad():
            ref = m(x).numpy()
        y, s = q.run(xs), np.asarray(q.simulate(xs))
        yo = ort_session(q, threads=1).run(None, {q.program.input: xs})[0]
        print(f"| {cell} 2x bidir | {100 * (y.argmax(1) == ref.argmax(1)).mean():.1f} | {100 * (y.argmax(1) == s.argmax(1)).mean():.1f} "
              f"| {100 * (yo.argmax(1) == y.argmax(1)).mean():.1f} | {_ort_int_diff(q, xs, yo)} |")


def tables() -> None:
    print("\n## Gate tables (513 entries, interpolated; Q3.12 in, Q0.15 out) vs exact, all 65536 inputs\n")
    print("| fn | max error (LSB of 2^-15) | mean error (LSB) | max abs error |")
    print("|---|---|---|---|")
    for fn in ("sigmoid", "tanh"):
        e = table_error(fn)
        print(f"| {fn} | {e['max_lsb']:.2f} | {e['mean_lsb']:.3f} | {e['max_abs']:.2e} |")
    v = fixedpoint16.ALL.astype(np.float64)
    for fn, bits in (("sigmoid", 3), ("tanh", 3), ("tanh", 6)):
        exact = 1 / (1 + np.exp(-v * 2.0**-12)) if fn == "sigmoid" else np.tanh(v * 2.0**(bits - 15))
        err = np.abs(fixedpoint16.table(fn, bits) - exact * 2.0**15)
        print(f"| {fn} gemmlowp Q{bits}.{15 - bits} (TFLite LSTM) | {err.max():.2f} | {err.mean():.3f} | {err.max() * 2.0**-15:.2e} |")


def tflite() -> None:
    from edgequant.export.tflite import to_tflite
    from edgequant.export.tflite.run import run_tflite

    print("\n## TFLite: w8a8 LSTMs as UNIDIRECTIONAL_SEQUENCE_LSTM, LiteRT reference kernels vs the interpreter\n")
    print("| net | inputs | top-1 interpreter % | top-1 TFLite % | argmax parity % | max diff (output LSB) "
          "| optimized kernels: parity % / max LSB | export s | LiteRT ref s |")
    print("|---|---|---|---|---|---|---|---|---|")
    calib, test = eq.data.digits()
    xs = np.concatenate([x.numpy() for x, _ in test])
    ys = np.concatenate([y.numpy() for _, y in test])
    g = torch.Generator().manual_seed(1)
    rnd = eq.models.sequence_rnn("lstm", features=40, hidden=128, layers=2, bidirectional=True)
    nets = [("digits_lstm", eq.models.digits_lstm(pretrained=True), calib, xs, ys, "539 test"),
            ("lstm 2x bidir T50 h128", rnd, [torch.randn(256, 50, 40, generator=g)],
             torch.randn(64, 50, 40, generator=g).numpy(), None, "64 random")]
    for name, m, cal, x, y, what in nets:
        q = eq.quantize(m, "w8a8", cal)
        ref = q.run(x)
        t0 = time.time()
        data = to_tflite(q, batch_size=len(x))
        t1 = time.time()
        yt = run_tflite(data, x, kernels="reference")
        t2 = time.time()
        yo = run_tflite(data, x, kernels="optimized")

        def lsb(o):
            return int(np.abs(np.round((o - ref) / float(q.program.output_qparams.scale))).max())

        def parity(o):
            return f"{100 * (o.argmax(1) == ref.argmax(1)).mean():.1f}"

        top = (lambda o: f"{100 * (o.argmax(1) == y).mean():.2f}") if y is not None else (lambda o: "")
        print(f"| {name} | {what} | {top(ref)} | {top(yt)} | {parity(yt)} | {lsb(yt)} | {parity(yo)} / {lsb(yo)} "
              f"| {t1 - t0:.2f} | {t2 - t1:.2f} |")


def _ort(q, recipe_threads: int = 1):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = recipe_threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(to_onnx(q).SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = q.program.input
    return lambda x: sess.run(None, {name: x})[0]


def speed(rounds: int, burst: int, batches: tuple[int, ...]) -> None:
    print(f"\n## Speed: T 50, 40 features, hidden 256, 1 thread; ms per call, median of {rounds} interleaved rounds\n")
    print("| net | batch | PyTorch fp32 | PyTorch dynamic int8 (anchor) | ours w8a8-pc (ORT) | ours dyn8 (ORT) | interpreter w8a8-pc "
          "| ours w8a8-pc / anchor | ours dyn8 / anchor |")
    print("|---|---|---|---|---|---|---|---|---|")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(2)
    for cell in ("lstm", "gru"):
        m = eq.models.sequence_rnn(cell, features=40, hidden=256)
        calib = torch.randn(64, 50, 40, generator=g)
        rnn_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tdyn = torch.ao.quantization.quantize_dynamic(m, {rnn_cls, torch.nn.Linear}, dtype=torch.qint8)
        q8, qd = eq.quantize(m, "w8a8-pc", [calib]), eq.quantize(m, "dyn8", [calib])
        o8, od = _ort(q8), _ort(qd)
        for b in batches:
            x = torch.randn(b, 50, 40, generator=g)
            xn = x.numpy()

            def torch_call(model):
                def f():
                    with torch.no_grad():
                        model(x)
                return f

            variants = {"fp32": torch_call(m), "tdyn": torch_call(tdyn), "ours8": lambda: o8(xn), "oursd": lambda: od(xn),
                        "interp": lambda: q8.run(xn)}
            times: dict[str, list[float]] = {k: [] for k in variants}
            ratios: dict[str, list[float]] = {"ours8": [], "oursd": []}
            for _ in range(rounds):
                order = list(variants)
                random.shuffle(order)
                got = {}
                for k in order:
                    variants[k]()
                    n = 1 if k == "interp" else burst
                    ts = []
                    for _ in range(n):
                        t0 = time.perf_counter()
                        variants[k]()
                        ts.append(time.perf_counter() - t0)
                    got[k] = statistics.median(ts) * 1e3
                    times[k].append(got[k])
                for k in ratios:
                    ratios[k].append(got[k] / got["tdyn"])
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"| {cell} | {b} | {med['fp32']:.2f} | {med['tdyn']:.2f} | {med['ours8']:.2f} | {med['oursd']:.2f} "
                  f"| {med['interp']:.1f} | {statistics.median(ratios['ours8']):.2f}x | {statistics.median(ratios['oursd']):.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 3 calls")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--burst", type=int, default=5)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--only-tflite", action="store_true", help="the TFLite section alone")
    args = ap.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    t0 = time.time()
    if args.only_tflite:
        tflite()
        return
    real_data()
    coverage()
    tables()
    tflite()
    if not args.skip_speed:
        speed(3 if args.quick else args.rounds, 3 if args.quick else args.burst, (1, 32))
    print(f"\n(wall {time.time() - t0:.0f} s; torch {torch.__version__}, onnxruntime {ort.__version__})")


if __name__ == "__main__":
    main()
