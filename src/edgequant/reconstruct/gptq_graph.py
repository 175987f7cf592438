"""GPTQ on graphs the unit pipeline cannot cut: transformers (keyword inputs, padding masks, attention).

Why: ``brecq.reconstruct_graph`` walks single-entry units, which a BERT layer reading its padding
mask is not. GPTQ needs only each layer's input Hessian ``sum X X^T``, so here one pass of the
calibration data through the graph -- activations fake-quantized on the program's grids
(``act_qp``, 16-bit where act16 widened them), weights still float -- collects it for every linear
and conv input (tokens flattened into columns, padded tokens left out), then ``gptq_node``
rounds each layer on its recipe grid (per channel, or per group of input columns with option
``weight_group``, ``lowbit/groups.py``). Option ``sequential``: the paper's sequential mode, each
layer's Hessian from inputs produced by the already rounded layers before it, one pass per stage of
mutually independent layers (``stages``) instead of one pass in all.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..calibrate import iter_batches
from ..feeds import batch_size, take
from ..graph_exec import GraphModule
from ..ir import Graph, Node
from ..masking import batch_keep, kept_rows, padding_masks
from ..qmath import QParams, fake_quantize
from .brecq import ReconConfig, ReconResult, UnitReport, WeightGrid, _hessian_error
from .gptq import Hessian, gptq_node


def stages(graph: Graph, layers: list[Node]) -> list[list[Node]]:
    """``layers`` in graph order cut into runs of mutually independent layers (a BERT layer's Q, K
    and V share a stage; its attention output starts the next): the passes of the sequential mode."""
    anc: dict[str, set[str]] = {}
    for n in graph.nodes:
        anc[n.name] = set().union(*({a} | anc[a] for a in n.inputs)) if n.inputs else set()
    out: list[list[Node]] = []
    for n in layers:
        if out and not any(m.name in anc[n.name] for m in out[-1]):
            out[-1].append(n)
        else:
            out.append([n])
    return out


def gptq_graph(graph: Graph, act_qp: dict[str, QParams], grids: dict[str, WeightGrid], calib,
               cfg: ReconConfig) -> ReconResult:
    """GPTQ integers for every node in ``grids`` from fake-quantized passes over ``calib``: one pass
    for all layers, or with ``cfg.sequential`` one per stage (``stages``) with the layers rounded
    so far running on their integers (the paper's sequential mode; 24 passes on a 6-layer BERT)."""
    t_start = time.perf_counter()
    layers = [n for n in graph.nodes if n.name in grids]
    gm = GraphModule(graph)
    masks = padding_masks(graph)
    res = ReconResult()
    times: dict[str, float] = {}
    near = err = 0.0  # summed output MSE (Hessian-weighted) of nearest rounding and of GPTQ
    for stage in stages(graph, layers) if cfg.sequential else [layers]:
        hess = _hessians(gm, stage, act_qp, calib, cfg, masks)
        for n in stage:
            t0 = time.perf_counter()
            grid = grids[n.name]
            bits = grid.extra.get("channel_bits")
            binary = None if bits is None else np.asarray(bits) == 1
            w = torch.as_tensor(n.params["weight"], dtype=torch.float64)
            steps = grid.steps(tuple(w.shape))  # (O,), or (O, K) with group-wise scales
            q = gptq_node(n, hess[n.name], steps, grid.lo, grid.hi, binary, cfg.damp, act_order=cfg.act_order)
            res.weights[n.name] = (q.numpy().astype(np.int8), grid.scale, grid.bits)
            w2, q2 = w.reshape(w.shape[0], -1), q.reshape(w.shape[0], -1)
            s = torch.as_tensor(steps, dtype=torch.float64).reshape(w.shape[0], -1)
            lo, hi = (torch.as_tensor(v, dtype=torch.float64).reshape(-1, 1) for v in (grid.lo, grid.hi))
            near += _hessian_error(w2 - torch.clamp(torch.round(w2 / s), lo, hi) * s, hess[n.name])
            err += _hessian_error(w2 - q2 * s, hess[n.name])
            if cfg.sequential:  # later passes see this layer's integers
                gm.set_param(n.name, "weight", (q2 * s).reshape(w.shape))
            times[n.name] = time.perf_counter() - t0
    res.seconds = time.perf_counter() - t_start
    label = "graph (sequential)" if cfg.sequential else "graph (one pass)"
    res.units.append(UnitReport(label, tuple(n.name for n in layers), near, err, res.seconds, times))
    return res


def _hessians(gm: GraphModule, layers: list[Node], act_qp: dict[str, QParams], calib, cfg: ReconConfig,
              masks: set[str]) -> dict[str, Hessian]:
    """One fake-quantized pass over ``calib``: the input Hessian of each of ``layers``."""
    hess = {n.name: Hessian(n) for n in layers}
    readers: dict[str, list[Node]] = {}
    for n in layers:
        readers.setdefault(n.inputs[0], []).append(n)
    seen = 0
    keep: torch.Tensor | None = None

    def hook(node: Node, y: torch.Tensor) -> torch.Tensor:
        qp = act_qp.get(node.name)  # float inputs too: the program quantizes them first
        if qp is not None:
            y = fake_quantize(y, float(qp.scale), float(qp.zero_point), qp.qmin, qp.qmax)
        for n in readers.get(node.name, ()):
            x = y.detach()
            if "in_scale" in n.params:  # SmoothQuant (lowbit/smooth.py): the layer sees its input times the factors
                x = x * torch.as_tensor(n.params["in_scale"], dtype=x.dtype)
            hess[n.name].add(kept_rows(n, x, keep))
        return y

    with torch.no_grad():
        for x in iter_batches(calib):
            if seen >= cfg.calib_samples:
                break
            n = batch_size(x)
            x = take(x, 0, min(n, cfg.calib_samples - seen))
            keep = batch_keep(x, masks)
            gm(x, hook)
            seen += n
    return hess
