"""16-bit activation programs exported to ONNX and run in ONNX Runtime, on EfficientNet-Lite1 (issue 16 part 3).

    python bench/onnx_wide.py [--recipes w8a16-res,w8a8-pc] [--calib 64] [--eval 200] [--interp w8a16-res] [--json out.json]

For each recipe: quantize on ``--calib`` crops (examples/efficientnet_lite.py), export QDQ ONNX, run
the ``--eval`` crops in ONNX Runtime (1 thread) and in the interpreter (both rounding modes, 1
thread); report top-1 agreement with fp32 (torch), ORT vs interpreter parity in output LSB, and run
seconds side by side, plus fp32 in ORT (the fp32 recipe's export) for the time baseline.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def _ort(path: Path, x: np.ndarray, bs: int) -> tuple[np.ndarray, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    s.run(None, {name: x[:1]})  # session warm-up, not timed
    t = time.perf_counter()
    y = np.concatenate([s.run(None, {name: x[i:i + bs]})[0] for i in range(0, len(x), bs)])
    return y, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="w8a16-res,w8a8-pc")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--interp", default=None, help="recipes also run in the interpreter (default: all; 'none')")
    p.add_argument("--parity", type=int, default=None, help="interpreter runs on the first N evaluation crops (default: all)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)

    import edgequant as eq
    import efficientnet_lite as E

    model = E.model().eval()
    calib, _ = E.crops(a.calib, seed=1)
    ev, _ = E.crops(a.eval, seed=0)
    x = ev.numpy()
    t = time.perf_counter()
    with torch.no_grad():
        ref = torch.cat([model(ev[i:i + a.batch]) for i in range(0, len(ev), a.batch)]).numpy()
    torch_s = time.perf_counter() - t
    top = ref.argmax(1)
    tmp = Path(tempfile.mkdtemp(prefix="eq-wide-"))
    rows = [{"recipe": "fp32", "engine": "torch", "run_s": torch_s}]
    qf = eq.quantize(model, "fp32", calib)
    qf.export(tmp / "fp32.onnx", format="onnx")
    y, s = _ort(tmp / "fp32.onnx", x, a.batch)
    rows.append({"recipe": "fp32", "engine": "onnxruntime (edgequant export)", "agree_pct": 100.0 * float((y.argmax(1) == top).mean()),
                 "run_s": s})
    print(json.dumps(rows[0]), json.dumps(rows[1]), sep="\n", flush=True)
    for r in [r for r in a.recipes.split(",") if r]:
        t = time.perf_counter()
        q = eq.quantize(model, r, calib)
        tq = time.perf_counter() - t
        path = tmp / f"{r}.onnx"
        q.export(path, format="onnx")
        y, s = _ort(path, x, a.batch)
        oqp = q.program.output_qparams
        got = np.rint(y / np.float32(oqp.scale)).astype(np.int64) + int(oqp.zero_point)
        row = {"recipe": r, "quantize_s": tq, "ort_run_s": s, "ort_agree_pct": 100.0 * float((y.argmax(1) == top).mean())}
        n = len(x) if a.parity is None else min(a.parity, len(x))
        for mode in ("onnxruntime", "gemmlowp") if a.interp is None or r in a.interp.split(",") else ():
            t = time.perf_counter()
            qi = np.concatenate([np.asarray(q.run(x[i:min(i + a.batch, n)], rounding=mode, return_int=True), np.int64)
                                 for i in range(0, n, a.batch)])
            row[f"interp_{mode}_run_s ({n} crops)"] = time.perf_counter() - t
            yi = (qi - int(oqp.zero_point)) * float(oqp.scale)
            row[f"interp_{mode}_agree_pct ({n} crops)"] = 100.0 * float((yi.argmax(1) == top[:n]).mean())
            d = np.abs(got[:n] - qi)
            row[f"lsb_vs_{mode}"] = {"max": int(d.max()), "exact_pct": 100.0 * float((d == 0).mean()),
                                     "within1_pct": 100.0 * float((d <= 1).mean())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
