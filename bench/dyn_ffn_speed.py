"""ONNX Runtime latency of the dynamic transformer recipes' exported linears, side by side in one run.

    python bench/dyn_ffn_speed.py [--tokens 4096] [--repeats 9] [--threads 1]

A BERT-base-width FFN block (384 -> 1536 -> GELU -> 384, all-MiniLM-L6-v2's shape) on ``--tokens``
random tokens, exported by edgequant (``int4_weights=True``) for ``fp32``, ``dyn8``, ``dyn8-tok``,
``dyn8-sq`` and ``dyn4-g16-gptq`` (group-wise 4-bit: two u8s8 MatMulIntegers whose weights ONNX
Runtime folds from the 4-bit codes and multipliers at load), each run in ONNX Runtime; prints the
median ms per recipe, the ratio to fp32, whether every MatMulInteger's weight is a folded
initializer (prepacked by MLAS), and the file size.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import onnx
    import onnxruntime as ort

    import edgequant as eq
    from edgequant.reconstruct import with_options

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(384, 1536), torch.nn.GELU(), torch.nn.Linear(1536, 384)).eval()
    x = torch.randn(a.tokens // 64, 64, 384)
    d = tempfile.mkdtemp(prefix="eq-ffn-")
    sessions = {}
    for name, r in (("fp32", "fp32"), ("dyn8", "dyn8"), ("dyn8-tok", "dyn8-tok"), ("dyn8-sq", "dyn8-sq"),
                    ("dyn4-g16-gptq", with_options("dyn4-g16-gptq", act_order=False))):
        q = eq.quantize(m, r, [x[:8]])
        p = os.path.join(d, f"{name}.onnx")
        q.export(p, int4_weights=True)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
        so.log_severity_level = 3
        so.optimized_model_filepath = p + ".opt.onnx"
        s = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
        g = onnx.load(p + ".opt.onnx")
        inits = {i.name for i in g.graph.initializer}
        folded = all(n.input[1] in inits for n in g.graph.node if n.op_type == "MatMulInteger")
        sessions[name] = (s, {s.get_inputs()[0].name: x.numpy()}, folded, os.path.getsize(p))
    times = {k: [] for k in sessions}
    for s, f, _, _ in sessions.values():
        s.run(None, f)  # warm-up
    for _ in range(a.repeats):  # interleaved: each round times every recipe once
        for k, (s, f, _, _) in sessions.items():
            t = time.perf_counter()
            s.run(None, f)
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["fp32"])
    print(f"FFN 384-1536-384, {a.tokens} tokens, {a.threads} thread(s), median of {a.repeats} interleaved rounds")
    for k, (_, _, folded, size) in sessions.items():
        ms = 1000 * statistics.median(times[k])
        print(f"{k:14s} {ms:8.1f} ms  {ms / (1000 * base):5.2f}x fp32  weights folded: {folded}  file {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
