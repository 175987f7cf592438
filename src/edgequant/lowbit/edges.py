"""First and last layers: which they are, and the widths a recipe gives them.

Binary/ternary networks keep their first and last layers at 8 bits (XNOR-Net, TWN): the first sees
the raw input (few channels, little to gain, much to lose) and the last produces the logits. A
recipe says so with the option ``first_last_bits`` (an int; ``None`` = no rule). It sets:

* the weight width of the *first* GEMM layers (no conv/linear before them) and the *last* ones (no
  conv/linear after them);
* the activation width of the network input and of the last layers' outputs (the logits).

The rule only changes the base width: a ``LayerOverride`` matching the layer still wins, so
``LayerOverride("features.0.*", weight_bits=1)`` binarizes the first layer anyway.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..calibrate import iter_batches
from ..feeds import batch_size, float_inputs
from ..errors import CalibrationError
from ..graph_exec import GraphModule
from ..ir import Graph, Node
from ..observers import make_observer
from ..qmath import QParams
from ..recipes import Recipe

GEMM_OPS = ("conv", "linear")


def _reach(graph: Graph, forward: bool) -> dict[str, set[str]]:
    """name -> every node reachable from it (forward) or reaching it (backward)."""
    order = graph.nodes if not forward else list(reversed(graph.nodes))
    succ: dict[str, list[str]] = {n.name: [] for n in graph.nodes}
    for n in graph.nodes:
        for i in n.inputs:
            if forward:
                succ[i].append(n.name)
            else:
                succ[n.name].append(i)
    reach: dict[str, set[str]] = {}
    for n in order:
        acc: set[str] = set()
        for s in succ[n.name]:
            acc.add(s)
            acc |= reach[s]
        reach[n.name] = acc
    return reach


def first_last_layers(graph: Graph) -> tuple[set[str], set[str]]:
    """(first, last): GEMM nodes with no GEMM before them / after them."""
    by = graph.by_name()
    gemms = [n.name for n in graph.nodes if n.op in GEMM_OPS]
    before, after = _reach(graph, forward=False), _reach(graph, forward=True)
    first = {g for g in gemms if not any(by[a].op in GEMM_OPS for a in before[g])}
    last = {g for g in gemms if not any(by[d].op in GEMM_OPS for d in after[g])}
    return first, last


def edge_roles(graph: Graph) -> dict[str, set[str]]:
    """node name -> {"weights", "act"}: what the first/last rule widens for that node."""
    first, last = first_last_layers(graph)
    roles: dict[str, set[str]] = {graph.input: {"act"}}
    for g in first:
        roles.setdefault(g, set()).add("weights")
    for g in last:
        roles.setdefault(g, set()).update({"weights", "act"})
    return roles


def is_depthwise(node: Node) -> bool:
    """A grouped conv with one input channel per group (MobileNet/EfficientNet depthwise)."""
    return node.op == "conv" and node.attrs.get("groups", 1) > 1 and node.params["weight"].shape[1] == 1


def node_bits(graph: Graph, recipe: Recipe, node: Node) -> tuple[int | None, int | None]:
    """(weight_bits, act_bits) of ``node`` after the depthwise rule, the first/last rule and then
    the overrides.

    ``depthwise_bits`` (recipe option): weight width of depthwise convs. Why: a 3x3 depthwise
    filter has 9 weights per output channel, so its rounding error does not average out; at 4 bits
    it alone collapses EfficientNet-Lite (bench/RESULTS.md, issue 14), at 1-2% of the weights.
    """
    fl, dw = recipe.option("first_last_bits"), recipe.option("depthwise_bits")
    base = recipe
    if dw is not None and is_depthwise(node) and base.weights is not None:
        base = dataclasses.replace(base, weights=dataclasses.replace(base.weights, bits=int(dw)))
    if fl is None:
        return base.layer_bits(node.module)
    role = edge_roles(graph).get(node.name, set())
    if "weights" in role and base.weights is not None:
        base = dataclasses.replace(base, weights=dataclasses.replace(base.weights, bits=int(fl)))
    if "act" in role and base.activations is not None:
        base = dataclasses.replace(base, activations=dataclasses.replace(base.activations, bits=int(fl)))
    return base.layer_bits(node.module)


def recalibrate_edges(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None, calib) -> None:
    """Re-observe the edge activations whose width the first/last rule changed (in place).

    ``calibrate`` observed every tensor at ``Recipe.layer_bits``, which knows module names but
    not graph position; the network input and the logits are re-observed at their edge width.
    """
    if recipe.mode != "static" or recipe.option("first_last_bits") is None or not act_qp:
        return
    spec = recipe.activations
    want = {}
    for name in edge_roles(graph):
        if name in act_qp:
            ab = node_bits(graph, recipe, graph.node(name))[1]
            if ab is not None and act_qp[name].bits != ab:
                want[name] = ab
    if not want:
        return
    if calib is None:
        raise CalibrationError(f"recipe {recipe.name!r}: first_last_bits needs the calibration data")
    observers = {n: make_observer(spec.observer, bits=b, signed=True, symmetric=spec.symmetric, narrow=spec.narrow)
                 for n, b in want.items()}
    gm = GraphModule(graph)

    def hook(node: Node, y: torch.Tensor) -> torch.Tensor:
        if node.name in observers:
            observers[node.name].update(np.asarray(y.detach().numpy()))
        return y

    with torch.no_grad():
        for x in iter_batches(calib):
            if batch_size(x):
                gm(float_inputs(x), hook)
    for n, ob in observers.items():
        act_qp[n] = ob.qparams()
