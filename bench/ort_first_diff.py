"""Where an exported program first differs from the interpreter: all-MiniLM-L6-v2 (or any plug-in).

    python bench/ort_first_diff.py [--recipe w8a8-pc] [--sentences 32] [--show 7]

The program's ONNX export gets every program tensor as an extra graph output; ONNX Runtime runs it
(graph optimizations off, so no tensor is fused away) on one batch of ``examples/sentence_encoder.py``
sentences, and the interpreter runs ``rounding="onnxruntime"`` with a trace. Printed: the first
``--show`` instructions, in program order, whose outputs differ (op, tensor, max difference in the
tensor's integer units, how many elements), then the final output's max |difference|.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="w8a8-pc")
    ap.add_argument("--sentences", type=int, default=32)
    ap.add_argument("--show", type=int, default=7)
    a = ap.parse_args()
    import onnx
    import onnxruntime as ort

    import edgequant as eq
    import sentence_encoder as S
    from edgequant import interpreter
    from edgequant.export.onnx import to_onnx

    model = S.build()
    calib, ev = S.split(32, a.sentences)
    q = eq.quantize(model, a.recipe, calib)
    om = to_onnx(q)
    vi = {v.name: v for v in onnx.shape_inference.infer_shapes(om).graph.value_info}
    want = [ins.output for ins in q.program.instrs if ins.output in vi]
    om.graph.output.extend(vi[t] for t in want)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(om.SerializeToString(), so, providers=["CPUExecutionProvider"])
    b = {k: v.numpy() for k, v in ev[0].items()}
    outs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {i.name: b[i.name] for i in s.get_inputs()})))
    trace: dict = {}
    interpreter.run(q.program, b, rounding="onnxruntime", trace=lambda ins, v: trace.__setitem__(ins.output, v))

    def diff(t: str) -> np.ndarray:
        got, ref = np.asarray(outs[t]), np.asarray(trace[t])
        g = got.astype(np.float64) - (128 if got.dtype == np.uint8 and ref.dtype == np.int8 else 0)  # uint8 export of int8
        return np.abs(g.reshape(ref.shape) - ref.astype(np.float64))

    shown, last = 0, None
    for ins in q.program.instrs:
        if ins.output not in outs or ins.output not in trace or np.asarray(outs[ins.output]).size != np.asarray(trace[ins.output]).size:
            continue
        last = ins
        d = diff(ins.output)
        if d.max() > 0 and shown < a.show:
            print(f"{ins.op:12s} {ins.output:24s} max {d.max():g}  {int((d > 0).sum())} of {d.size}")
            shown += 1
    print(f"{len(want)} tensors compared; none differ" if shown == 0 else "")
    if last is not None:
        print(f"final ({last.op} {last.output}): max |diff| {diff(last.output).max():.4g}")


if __name__ == "__main__":
    main()
