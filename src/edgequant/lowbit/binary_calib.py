"""Sequential calibration of 1-bit activations.

``calibrate`` observes every tensor in the float network. For a binary tensor that is the wrong
network: once the layers before it are binarized (weights and activations), the distribution it
sees shrinks or shifts, and a threshold fitted on float inputs can leave a layer all-zero (on the
digits CNN the 64-unit hidden layer of ``w1a1-xnor`` came out > 99.9% zero, and the program sat at
chance). Here each 1-bit tensor, in graph order, is re-observed on the network whose weights are
the quantized ones the program will hold and whose earlier 1-bit tensors are already binarized,
with the recipe's activation observer (ACIQ for ``w1a1-xnor``). One calibration pass per binary
tensor; recipes without 1-bit activations are untouched.
"""
from __future__ import annotations

import numpy as np
import torch

from ..calibrate import iter_batches
from ..errors import CalibrationError
from ..graph_exec import GraphModule
from ..ir import Graph, Node
from ..observers import make_observer
from ..qmath import QParams
from ..recipes import Recipe
from .bias_correction import dequantized_weight
from .binary_act import is_binary_tensor
from .edges import node_bits


class _Seen(Exception):
    """Stops a calibration forward once the tensor being observed has been seen."""


def fake_binarize(y: torch.Tensor, qp: QParams) -> torch.Tensor:
    """The two real levels ``scale * (+-1 - zp)``, split at their midpoint (as ``binarize``)."""
    s, z = float(qp.scale), int(qp.zero_point)
    return torch.where(y >= s * (0 - z), s * (1 - z), s * (-1 - z)).to(y.dtype)


def recalibrate_binary(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None, calib) -> None:
    """Re-observe 1-bit activation tensors in order on the binarized upstream network (in place)."""
    if recipe.mode != "static" or not act_qp:
        return
    binary = [n.name for n in graph.nodes if is_binary_tensor(act_qp.get(n.name))]
    if not binary:
        return
    if calib is None:
        raise CalibrationError(f"recipe {recipe.name!r}: 1-bit activations need the calibration data")
    g = graph.copy()
    for n in g.nodes:
        if n.op in ("conv", "linear"):
            wb = node_bits(graph, recipe, n)[0]
            if wb is not None:
                n.params["weight"] = dequantized_weight(n, recipe, wb).astype(np.float32)
    gm = GraphModule(g)
    batches = [x.float() for x in iter_batches(calib) if x.numel()]
    spec = recipe.activations
    done: set[str] = set()
    for name in binary:
        ob = make_observer(spec.observer, bits=1, signed=True, symmetric=spec.symmetric, narrow=spec.narrow)

        def hook(node: Node, y: torch.Tensor) -> torch.Tensor:
            if node.name == name:
                ob.update(y.detach().numpy())
                raise _Seen  # nothing after it matters for this tensor
            if node.name in done:
                return fake_binarize(y, act_qp[node.name])
            return y

        with torch.no_grad():
            for x in batches:
                try:
                    gm(x, hook)
                except _Seen:
                    pass
        act_qp[name] = ob.qparams()
        done.add(name)
