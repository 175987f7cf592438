"""Sequential empirical bias correction (``bias_correction="sequential"``).

Why: ``"empirical"`` (DFQ, section 4.2) folds ``(W - Wq) E[x]`` into each bias, ``E[x]`` from the
float model: it corrects the shift the layer's own weight rounding adds, not the shift that
arrives from upstream (activation rounding and clipping, the upstream layers' residual errors).
On a deep depthwise net those add up. Here each conv/linear, in graph order, gets the bias that
makes the mean of its pre-activation output over the calibration samples equal the float
model's, measured *with everything upstream already quantized and corrected* (weights as
lowering will store them, activations fake-quantized on their calibrated grids): AIMET's
empirical bias correction, run as one layer-by-layer pass over ``bias_correction_samples``
(default 32) samples held together in memory (one float and one quantized copy of the maps
alive at a time: ~1 GB on EfficientNet-Lite1 at 240x240).
"""
from __future__ import annotations

import numpy as np
import torch

from ..calibrate import iter_batches
from ..errors import CalibrationError, RecipeError
from ..graph_exec import _act, last_uses, run_node
from ..ir import Graph, Node
from ..qmath import QParams
from ..recipes import Recipe

SAMPLES = 32
GEMMS = ("conv", "linear")


def _samples(calib, limit: int) -> torch.Tensor:
    xs, seen = [], 0
    for x in iter_batches(calib):
        if isinstance(x, dict):
            raise RecipeError("bias_correction='sequential' supports single-tensor inputs; use 'empirical' for keyword inputs")
        if len(x):
            xs.append(x[: limit - seen].float())
            seen += len(xs[-1])
        if seen >= limit:
            break
    if not xs:
        raise CalibrationError("bias_correction='sequential' needs a non-empty calibration set")
    return torch.cat(xs)


def _fake(y: torch.Tensor, qp: QParams | None) -> torch.Tensor:
    if qp is None or qp.per_channel:
        return y
    return torch.fake_quantize_per_tensor_affine(y, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax)


def _channel_mean(y: torch.Tensor, node: Node) -> torch.Tensor:
    if node.op == "linear":
        return y.reshape(-1, y.shape[-1]).double().mean(dim=0)
    return y.transpose(0, 1).reshape(y.shape[1], -1).double().mean(dim=1)


def sequential_biases(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams], calib, bits_of,
                      dequantize, samples: int = SAMPLES) -> Graph:
    """A copy of ``graph`` whose quantized gemms' biases make each pre-activation mean match the float one.

    ``bits_of(node)`` is the node's weight width (None: float weights); ``dequantize(node, bits)`` the
    float value of the weights lowering will store."""
    if any(qp.bits < 2 for qp in act_qp.values()):
        raise RecipeError(f"recipe {recipe.name!r}: bias_correction='sequential' needs activations of 2+ bits "
                          "(1-bit activations are signs, not a grid); use 'empirical'")
    if graph.extra_inputs:
        raise RecipeError("bias_correction='sequential' supports single-input graphs; use 'empirical'")
    x = _samples(calib, samples)
    g = graph.copy()
    last = last_uses(g)
    fenv: dict[str, torch.Tensor] = {}
    qenv: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, n in enumerate(g.nodes):
            fp = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in n.params.items()}
            if n.op == "input":
                yf = yq = x
            elif n.op in GEMMS and bits_of(n) is not None:
                bare = Node(n.name, n.op, n.inputs, {k: v for k, v in n.attrs.items() if k != "act"}, {}, n.shape, n.module)
                pre_f = run_node(bare, [fenv[a] for a in n.inputs], fp)
                wq = torch.as_tensor(dequantize(n, bits_of(n)), dtype=torch.float32)
                pre_q = run_node(bare, [qenv[a] for a in n.inputs], {**fp, "weight": wq})
                delta = _channel_mean(pre_f, n) - _channel_mean(pre_q, n)
                n.params["bias"] = (n.params["bias"].astype(np.float64) + delta.numpy()).astype(np.float32)
                shape = (1,) * (pre_q.ndim - 1) + (-1,) if n.op == "linear" else (1, -1) + (1,) * (pre_q.ndim - 2)
                yf, yq = _act(pre_f, n), _act(pre_q + delta.float().reshape(shape), n)
                del pre_f, pre_q
            else:
                yf = run_node(n, [fenv[a] for a in n.inputs], fp)
                yq = run_node(n, [qenv[a] for a in n.inputs], fp)
            fenv[n.name], qenv[n.name] = yf, _fake(yq, act_qp.get(n.name))
            for a in set(n.inputs):
                if last.get(a) == i:
                    del fenv[a], qenv[a]
    return g
