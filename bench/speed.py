"""Speed and size of edgequant's ONNX export against its peers, measured side by side in one run.

For ResNet-18 and MobileNetV2 at ImageNet shape (random weights, BN statistics randomized and
folded by edgequant's capture) and a BERT-base encoder layer (seq 128, built from nn modules):

* ORT fp32   -- ``torch.onnx.export`` (TorchScript exporter) of the float model in ONNX Runtime
* ours int8  -- ``edgequant.quantize(model, "w8a8-pc", calib)`` exported as QDQ (uint8 activations)
* ORT qstat  -- ``onnxruntime.quantization.quantize_static`` of the fp32 file (QDQ, per-channel,
                uint8 activations x int8 weights, MinMax) on the same calibration batch
* ORT qdyn   -- ``quantize_dynamic`` (int8 weights; BERT only, the usual recipe for transformers)
* torch      -- PyTorch fp32 eager

Latency is the median of interleaved rounds: every round runs each variant in a fresh random
order, as one untimed call (it absorbs the switch: the previous variant's ORT/OpenMP threads
still spinning, cold caches) then ``--burst`` timed calls (median), so machine noise hits all
variants alike and no variant always follows the same neighbour; a speedup is the median over
rounds of (other / ours) timed in the same round -- robust on a shared machine.
Batch 1 and 8, 1 and 2 threads. Also file sizes and quantization time (ours vs quantize_static).

    python bench/speed.py                      # everything (~10 min on a 2-core box)
    python bench/speed.py --models resnet18 --batches 8 --threads 2 --repeats 15
    python bench/speed.py --quick              # smoke run: 64x64 / seq 32, batch 1, 1 thread, 2 repeats
    python bench/speed.py --tflite             # also run bench/speed_tflite.py (LiteRT), if present

After ONNX Runtime's optimizer our file and quantize_static's run the same integer kernels
(the script prints both graphs' op histograms), so the margin over quantize_static comes from
what the exporter does differently: the RGB stem's input channels padded 3 -> 4 (exact; ORT's
u8s8 conv kernels step 4 channels) and MobileNetV2's pool as one QLinearGlobalAveragePool.
Under load, ``--no-spin`` (ORT threads block instead of spinning) gives steadier ratios; the
process CPU-time table is immune to other processes holding the cores.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.export.onnx import to_onnx


class BertLayer(nn.Module):
    """A BERT-base encoder layer (post-LN, GELU), written out in nn modules and tensor ops."""

    def __init__(self, d: int = 768, heads: int = 12, ff: int = 3072) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, d)
        n, t, d = x.shape
        h, dh = self.heads, d // self.heads
        q, k, v = (m(x).view(n, t, h, dh).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1) @ v  # (N, h, T, dh)
        x = self.ln1(x + self.o(a.transpose(1, 2).reshape(n, t, d)))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


def make_model(name: str, size: int = 224, seq: int = 128) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "resnet18":
        return eq.models.randomize_bn(eq.models.resnet18()).eval(), (3, size, size)
    if name == "mobilenet_v2":
        return eq.models.randomize_bn(eq.models.mobilenet_v2()).eval(), (3, size, size)
    if name == "bert_layer":
        return BertLayer().eval(), (seq, 768)
    raise SystemExit(f"unknown model {name!r}")


def optimized_ops(model_bytes_or_path) -> dict[str, int]:
    """Op histogram of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])
        g = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    hist: dict[str, int] = {}
    for n in g.node:
        hist[n.op_type] = hist.get(n.op_type, 0) + 1
    return dict(sorted(hist.items()))


def torch_onnx(model: nn.Module, x: torch.Tensor) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return f.getvalue()


class Calib(object):
    """onnxruntime CalibrationDataReader over one (N, ...) array, one sample at a time."""

    def __init__(self, data: np.ndarray, input_name: str) -> None:
        self.it = iter([{input_name: data[i : i + 1]} for i in range(len(data))])

    def get_next(self):
        return next(self.it, None)


def ort_quantize(fp32_path: str, out_path: str, calib: np.ndarray, dynamic: bool = False) -> float:
    """ORT's own quantizer (after its recommended pre-processing); returns seconds taken."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

    t = time.perf_counter()
    pre = out_path + ".pre.onnx"
    quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
    if dynamic:
        quantize_dynamic(pre, out_path, weight_type=QuantType.QInt8, per_channel=True)
    else:
        quantize_static(pre, out_path, Calib(calib, "x"), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    dt = time.perf_counter() - t
    os.remove(pre)
    return dt


SPIN = True  # ORT worker threads spin while waiting (its default); --no-spin makes them block


def session(model_bytes_or_path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not SPIN:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])


def ours(model: nn.Module, calib: np.ndarray, recipe: str = "w8a8-pc") -> tuple[bytes | None, float, str, object]:
    """(ONNX bytes or None, seconds to quantize+export, why not, the QuantizedModel) for edgequant."""
    t = time.perf_counter()
    try:
        q = eq.quantize(model, recipe, torch.from_numpy(calib))
        data = to_onnx(q).SerializeToString()
    except eq.EdgequantError as e:
        return None, 0.0, f"{type(e).__name__}: {str(e).splitlines()[0][:150]}", None
    return data, time.perf_counter() - t, "", q


def sqnr_db(ref: np.ndarray, y: np.ndarray) -> float:
    ref, y = np.asarray(ref, np.float64), np.asarray(y, np.float64)
    return float(10 * np.log10((ref**2).sum() / max(((ref - y) ** 2).sum(), 1e-300)))


def bert_accuracy(model: nn.Module, q, int8: bytes, qs_path: Path, shape: tuple[int, ...], n: int = 8) -> dict:
    """Output SQNR (dB) vs the fp32 model on fresh inputs drawn like the calibration batch (standard
    normal): our integer program (q.run, the reference), our export in ORT, and quantize_static's file."""
    x = np.random.default_rng(1).standard_normal((n, *shape)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    run = lambda m: (lambda s: s.run(None, {s.get_inputs()[0].name: x})[0])(session(m, 2))  # noqa: E731
    return {"ours q.run": sqnr_db(ref, q.run(x)), "ours ORT": sqnr_db(ref, run(int8)),
            "ORT qstatic": sqnr_db(ref, run(str(qs_path)))}


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of one call. CPU time does not count
    time other processes hold the cores, so it stays comparable on a loaded machine (with
    --no-spin: spinning worker threads would add their waiting to it)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def bench_model(name: str, args, tmp: Path) -> tuple[list[dict], dict]:
    model, shape = make_model(name, args.size, args.seq)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((args.calib, *shape)).astype(np.float32)
    fp32 = torch_onnx(model, torch.from_numpy(calib[:2]))
    fp32_path = tmp / f"{name}_fp32.onnx"
    fp32_path.write_bytes(fp32)
    int8, t_ours, why, q_ours = ours(model, calib)
    int4 = ours(model, calib, "w4a8")[0] if int8 is not None else None
    qs_path = tmp / f"{name}_qstatic.onnx"
    t_qs = ort_quantize(str(fp32_path), str(qs_path), calib)
    t_ours_2 = ours(model, calib)[1] if int8 is not None else 0.0  # a second pass each, interleaved
    t_qs_2 = ort_quantize(str(fp32_path), str(qs_path), calib)
    qd_path = tmp / f"{name}_qdynamic.onnx"
    if name == "bert_layer":
        ort_quantize(str(fp32_path), str(qd_path), calib, dynamic=True)
    acc = bert_accuracy(model, q_ours, int8, qs_path, shape) if name == "bert_layer" and int8 else None
    info = {"model": name, "accuracy": acc, "fp32_bytes": len(fp32), "ours_bytes": len(int8) if int8 else None,
            "ours_int4_bytes": len(int4) if int4 else None, "qstatic_bytes": qs_path.stat().st_size,
            "t_ours": min(t_ours, t_ours_2) if int8 else None, "t_qstatic": min(t_qs, t_qs_2), "why": why,
            "ops_ours": optimized_ops(int8) if int8 else None, "ops_qstatic": optimized_ops(str(qs_path))}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        variants = {"ORT fp32": session(fp32, threads), "ours int8": session(int8, threads) if int8 else None,
                    "ORT qstatic": session(str(qs_path), threads),
                    "ORT qdynamic": session(str(qd_path), threads) if name == "bert_layer" else None}
        for batch in args.batches:
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            xt = torch.from_numpy(x)
            fns = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in variants.items() if s is not None}
            fns["torch fp32"] = lambda: model(xt)
            times: dict[str, list[float]] = {k: [] for k in fns}
            cpu: dict[str, list[float]] = {k: [] for k in fns}
            with torch.inference_mode():
                for fn in fns.values():  # warm up (ORT allocates arenas on the first runs)
                    fn(), fn()
                order = list(fns)
                shuffle = np.random.default_rng(1)
                for r in range(args.repeats):
                    for k in shuffle.permutation(order):  # a fresh random order every round
                        # a burst of calls; the first absorbs the switch from the previous variant
                        # (its threads still spinning, caches cold) and is not counted
                        fns[k]()
                        burst = [timed(fns[k]) for _ in range(args.burst)]
                        times[k].append(statistics.median(w for w, _ in burst))
                        cpu[k].append(statistics.median(c for _, c in burst))
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            paired, paired_cpu = {}, {}  # median over rounds of (other / ours) in the same round
            if "ours int8" in times:
                paired = {k: statistics.median(a / b for a, b in zip(v, times["ours int8"])) for k, v in times.items()}
                paired_cpu = {k: statistics.median(a / max(b, 1e-9) for a, b in zip(v, cpu["ours int8"]))
                              for k, v in cpu.items()}
            rows.append({"model": name, "batch": batch, "threads": threads, **med, "paired": paired,
                         "cpu": {k: statistics.median(v) * 1e3 for k, v in cpu.items()}, "paired_cpu": paired_cpu})
            print(f"  {name} b{batch} t{threads}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()), flush=True)
    return rows, info


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "bert_layer"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds per configuration (median)")
    ap.add_argument("--calib", type=int, default=16, help="calibration samples (same for both quantizers)")
    ap.add_argument("--size", type=int, default=224, help="image side for the conv nets (ImageNet: 224)")
    ap.add_argument("--seq", type=int, default=128, help="sequence length for the BERT layer")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64x64, seq 32, batch 1, 1 thread, 2 repeats")
    ap.add_argument("--burst", type=int, default=3,
                    help="timed calls per variant per round after one untimed switch-over call (median)")
    ap.add_argument("--no-spin", action="store_true",
                    help="ORT worker threads block instead of spinning (fairer on a loaded machine)")
    ap.add_argument("--tflite", action="store_true", help="afterwards run bench/speed_tflite.py (LiteRT) if present")
    args = ap.parse_args()
    global SPIN
    SPIN = not args.no_spin
    if args.quick:
        args.size, args.seq, args.batches, args.threads, args.repeats, args.calib = 64, 32, [1], [1], 2, 4
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, edgequant {eq.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.repeats} interleaved rounds x burst {args.burst}, median, "
          f"ORT spinning {'on' if SPIN else 'off'}",
          flush=True)
    rows, infos = [], []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            r, info = bench_model(name, args, Path(d))
            rows += r
            infos.append(info)

    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[1]:.1f} (5 min)")
    print("\nLatency (ms, median) and speedups of our int8 export (median of per-round other / ours; > 1: ours faster)")
    hdr = (f"{'model':<13}{'b':>3}{'thr':>4}{'ORT fp32':>10}{'ours int8':>10}{'ORT qstat':>10}{'ORT qdyn':>9}"
           f"{'torch':>9}{'vs fp32':>9}{'vs qstat':>9}{'vs torch':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        o = r.get("ours int8")
        sp = lambda k: r["paired"].get(k)  # noqa: E731
        print(f"{r['model']:<13}{r['batch']:>3}{r['threads']:>4}{fmt(r['ORT fp32']):>10}{fmt(o):>10}"
              f"{fmt(r.get('ORT qstatic')):>10}{fmt(r.get('ORT qdynamic')):>9}{fmt(r['torch fp32']):>9}"
              f"{fmt(sp('ORT fp32'), '.2f'):>9}{fmt(sp('ORT qstatic'), '.2f'):>9}{fmt(sp('torch fp32'), '.2f'):>9}")
        if o is None:
            best = min(r[k] for k in ("ORT qstatic", "ORT qdynamic") if r.get(k) is not None)
            print(f"{'':<20}(no edgequant export; best ORT int8 is {r['ORT fp32'] / best:.2f}x ORT fp32)")

    print("\nProcess CPU time per run (ms, median, all threads) and ratios other / ours (same rounds)"
          + ("" if not SPIN else "; ORT threads spin (use --no-spin for CPU times that mean work)"))
    hdr = f"{'model':<13}{'b':>3}{'thr':>4}{'ORT fp32':>10}{'ours int8':>10}{'ORT qstat':>10}{'vs fp32':>9}{'vs qstat':>9}"
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        c, pc = r["cpu"], r["paired_cpu"]
        print(f"{r['model']:<13}{r['batch']:>3}{r['threads']:>4}{fmt(c.get('ORT fp32')):>10}{fmt(c.get('ours int8')):>10}"
              f"{fmt(c.get('ORT qstatic')):>10}{fmt(pc.get('ORT fp32'), '.2f'):>9}{fmt(pc.get('ORT qstatic'), '.2f'):>9}")

    print("\nFile sizes and quantization time (same calibration batch for both quantizers)")
    print(f"{'model':<13}{'fp32 MB':>9}{'ours int8':>11}{'ratio':>7}{'ours int4w':>11}{'ratio':>7}{'qstatic':>9}{'ratio':>7}"
          f"{'ours s':>8}{'qstatic s':>10}")
    for i in infos:
        mb = lambda b: None if b is None else b / 1e6  # noqa: E731
        ratio = lambda b: None if b is None else b / i["fp32_bytes"]  # noqa: E731
        print(f"{i['model']:<13}{mb(i['fp32_bytes']):>9.2f}{fmt(mb(i['ours_bytes']), '.2f'):>11}"
              f"{fmt(ratio(i['ours_bytes']), '.3f'):>7}{fmt(mb(i['ours_int4_bytes']), '.2f'):>11}"
              f"{fmt(ratio(i['ours_int4_bytes']), '.3f'):>7}{mb(i['qstatic_bytes']):>9.2f}{ratio(i['qstatic_bytes']):>7.3f}"
              f"{fmt(i['t_ours'], '.2f'):>8}{i['t_qstatic']:>10.2f}")
        if i["why"]:
            print(f"  {i['model']}: no edgequant export -- {i['why']}")
    for i in infos:
        if i.get("accuracy"):
            print(f"\n{i['model']} output SQNR vs fp32 (dB, 8 fresh standard-normal inputs, like the calibration batch): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in i["accuracy"].items()))

    print("\nGraphs ONNX Runtime runs after its optimizer (op histograms)")
    for i in infos:
        same = i["ops_ours"] == i["ops_qstatic"]
        print(f"  {i['model']}: ours {i['ops_ours']}")
        print(f"  {'':<{len(i['model'])}}  qstatic {i['ops_qstatic']}" + ("  [identical]" if same else ""))
    sys.stdout.flush()
    if args.tflite:
        run_tflite_bench(args)


def run_tflite_bench(args) -> None:
    """LiteRT latency from bench/speed_tflite.py (another module's; used only through its
    ``tflite_rows``/``print_table``), for the conv nets of this run, batch 1."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import speed_tflite
    except ImportError as e:
        print(f"\n--tflite: bench/speed_tflite.py cannot be imported ({e}); skipped")
        return
    models = [m for m in args.models if m in getattr(speed_tflite, "MODELS", ())]
    if not models:
        print("\n--tflite: none of this run's models has a TFLite export (the BERT layer's matmul/softmax/layernorm "
              "have no TFLite emitter yet)")
        return
    print(f"\nLiteRT (bench/speed_tflite.py), load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = speed_tflite.tflite_rows(models, tuple(args.threads), args.size, args.repeats, max(2, min(args.calib, 8)))
    speed_tflite.print_table(rows)


if __name__ == "__main__":
    main()
