"""Per-layer time on the engine that runs the program: ONNX Runtime's own node profile.

Why not the interpreter's: the latency objective must see what the deployed runtime pays. On ONNX
Runtime a <= 4-bit weight is an INT4 initializer widened by a Cast at every run, which keeps it out
of the fused QLinearConv path: EfficientNet-Lite1 W4A8 runs ~3x slower than W8A8 there (bench/
RESULTS.md), while in the interpreter (int8 containers) the widths cost the same.

ORT renames the nodes it fuses, but a fused node keeps the tensor names of what it replaced, and
every tensor the exporter writes for a layer starts with that layer's program tensor name (``conv2d_1``,
``conv2d_1_w_widen_out``, ...). So the optimized graph (``optimized_model_filepath``) maps each
profiled node to a layer by the longest program tensor name its outputs start with.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile

import numpy as np


def _owner(tensor: str, keys: list[str]) -> str | None:
    """The longest key ``k`` with ``tensor == k`` or ``tensor`` starting with ``k + "_"``."""
    best = None
    for k in keys:
        if (tensor == k or tensor.startswith(k + "_")) and (best is None or len(k) > len(best)):
            best = k
    return best


def ort_unit_ms(q, x: np.ndarray, unit_of_tensor: dict[str, str], threads: int | None, repeats: int) -> dict[str, float]:
    """unit -> median ms per run of the ORT nodes that compute it (first run dropped: warm-up)."""
    import onnx
    import onnxruntime as ort

    from ..backends import ort_options
    from ..export.onnx import to_onnx

    keys = sorted(unit_of_tensor)
    with tempfile.TemporaryDirectory() as d:
        so = ort_options(threads)
        so.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(d, "profile")
        sess = ort.InferenceSession(to_onnx(q).SerializeToString(), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        feed = {name: np.ascontiguousarray(x, np.float32)}
        for _ in range(max(repeats, 1) + 1):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
        graph = onnx.load(os.path.join(d, "optimized.onnx"), load_external_data=False).graph
    node_unit: dict[str, str] = {}
    for n in graph.node:
        for t in list(n.output) + [n.name]:
            k = _owner(t, keys)
            if k is not None:
                node_unit[n.name] = unit_of_tensor[k]
                break
    durs: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            durs.setdefault(e["name"][: -len("_kernel_time")], []).append(float(e["dur"]) / 1000.0)
    if not any(n in node_unit for n in durs):
        raise RuntimeError("no profiled ONNX Runtime node could be attributed to a layer")
    out: dict[str, float] = {}
    for n, ds in durs.items():
        u = node_unit.get(n)
        if u is not None:
            out[u] = out.get(u, 0.0) + statistics.median(ds[1:] or ds)
    return out
