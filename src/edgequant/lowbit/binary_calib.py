"""Sequential calibration of 1-bit activations.

``calibrate`` observes every tensor in the float network. For a binary tensor that is the wrong
network: once the layers before it are binarized (weights and activations), the distribution it
sees shrinks or shifts, and a threshold fitted on float inputs can leave a layer all-zero (on the
digits CNN the 64-unit hidden layer of ``w1a1-xnor`` came out > 99.9% zero, and the program sat at
chance). Here each 1-bit tensor, in graph order, is re-observed on the network whose weights are
the quantized ones the program will hold and whose earlier 1-bit tensors are already binarized,
with the recipe's activation observer (ACIQ for ``w1a1-xnor``), all in one layer-wise pass over the
calibration data; recipes without 1-bit activations are untouched.
"""
from __future__ import annotations

import numpy as np
import torch

from ..calibrate import iter_batches
from ..errors import CalibrationError
from ..deadline import check_deadline
from ..feeds import batch_size, input_value
from ..graph_exec import run_node
from ..ir import Graph
from ..observers import make_observer
from ..qmath import QParams
from ..recipes import Recipe
from .bias_correction import dequantized_weight
from .binary_act import is_binary_tensor
from .edges import node_bits


def fake_binarize(y: torch.Tensor, qp: QParams) -> torch.Tensor:
    """The two real levels ``scale * (+-1 - zp)``, split at their midpoint (as ``binarize``)."""
    s, z = float(qp.scale), int(qp.zero_point)
    return torch.where(y >= s * (0 - z), s * (1 - z), s * (-1 - z)).to(y.dtype)


def recalibrate_binary(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None, calib) -> None:
    """Re-observe 1-bit activation tensors in order on the binarized upstream network (in place).

    One layer-wise pass: every calibration batch is carried forward from one binary tensor to the
    next, so each graph node runs once per batch (re-running the prefix for every binary tensor
    was quadratic: 400 s on EfficientNet-Lite1). The observer sees the same batches in the same
    order as a per-tensor re-run, so the qparams are identical. Memory: only the tensors still
    needed downstream ("the frontier") are kept, for every calibration batch.
    """
    if recipe.mode != "static" or not act_qp:
        return
    binary = [n.name for n in graph.nodes if is_binary_tensor(act_qp.get(n.name))]
    if not binary:
        return
    if calib is None:
        raise CalibrationError(f"recipe {recipe.name!r}: 1-bit activations need the calibration data")
    params = {}
    for n in graph.nodes:
        p = dict(n.params)
        if n.op in ("conv", "linear"):
            wb = node_bits(graph, recipe, n)[0]
            if wb is not None:
                p["weight"] = dequantized_weight(n, recipe, wb).astype(np.float32)
        params[n.name] = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in p.items()}
    last_use = {}  # node -> index of the last node reading it
    for i, n in enumerate(graph.nodes):
        for t in n.inputs:
            last_use[t] = i
    envs = [{"__x__": x} for x in iter_batches(calib) if batch_size(x)]  # a tensor, or a dict of keyword inputs
    spec = recipe.activations
    pos = 0  # next node to run, for every batch
    with torch.no_grad():
        for name in binary:
            ob = make_observer(spec.observer, bits=1, signed=True, symmetric=spec.symmetric, narrow=spec.narrow)
            stop = next(i for i, n in enumerate(graph.nodes) if n.name == name)
            for env in envs:
                check_deadline("binary calibration")
                for i in range(pos, stop + 1):
                    n = graph.nodes[i]
                    y = input_value(env["__x__"], n) if n.op == "input" else run_node(n, [env[t] for t in n.inputs], params[n.name])
                    env[n.name] = y
                    for t in set(n.inputs):
                        if last_use.get(t) == i:
                            env.pop(t, None)
                ob.update(env[name].detach().numpy())
            act_qp[name] = ob.qparams()
            for env in envs:  # downstream tensors see this one binarized, as in the program
                env[name] = fake_binarize(env[name], act_qp[name])
            pos = stop + 1
