"""Graph passes (``Graph -> Graph``, validated after each): fold BatchNorm, fuse activations,
fold a constant scale into the matmul before it.

Folding follows the TFLite converter and the whitepaper: W' = W * g/sqrt(v+eps) per output
channel, b' = (b - mean) * g/sqrt(v+eps) + beta. A BatchNorm that does not follow a conv/linear
becomes a depthwise 1x1 conv so it still runs as integer arithmetic.
"""
from __future__ import annotations

import numpy as np

from .errors import UnsupportedOpError
from .ir import Graph, Node


def _bn_factors(bn: Node) -> tuple[np.ndarray, np.ndarray]:
    p = bn.params
    inv = p["weight"] / np.sqrt(p["var"] + bn.attrs["eps"])
    return inv.astype(np.float64), (p["bias"] - p["mean"] * inv).astype(np.float64)


def _replace_uses(g: Graph, old: str, new: str) -> None:
    for n in g.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
    if g.output == old:
        g.output = new


def fold_batchnorm(graph: Graph) -> Graph:
    g = graph.copy()
    by = g.by_name()
    keep: list[Node] = []
    for n in g.nodes:
        if n.op != "batchnorm":
            keep.append(n)
            continue
        prev = by[n.inputs[0]]
        scale, shift = _bn_factors(n)
        if prev.op in ("conv", "linear") and len(g.consumers(prev.name)) == 1 and "act" not in prev.attrs:
            w = prev.params["weight"].astype(np.float64)
            prev.params["weight"] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
            prev.params["bias"] = (prev.params["bias"] * scale + shift).astype(np.float32)
            _replace_uses(g, n.name, prev.name)
            continue
        if len(n.shape) != 4:
            raise UnsupportedOpError(f"{n.describe()}: BatchNorm on a {len(n.shape)}-D tensor that does not follow a conv/linear")
        c = n.shape[1]
        keep.append(Node(n.name, "conv", n.inputs,
                         {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": c, "dims": 2},
                         {"weight": scale.reshape(c, 1, 1, 1).astype(np.float32), "bias": shift.astype(np.float32)},
                         n.shape, n.module))
    g.nodes = keep
    return g.validate()


def fuse_activations(graph: Graph) -> Graph:
    """conv/linear/add followed by its only consumer clamp -> one node with ``act=(lo, hi)``.

    The fused clamp is then just the output range of the requantization (Jacob et al. 2018).
    """
    g = graph.copy()
    by = g.by_name()
    keep: list[Node] = []
    removed: set[str] = set()
    for n in g.nodes:
        if n.op == "clamp" and n.name not in removed:
            prev = by[n.inputs[0]]
            if prev.op in ("conv", "linear", "add") and "act" not in prev.attrs and len(g.consumers(prev.name)) == 1 and prev.name != g.output:
                prev.attrs["act"] = (n.attrs["lo"], n.attrs["hi"])
                _replace_uses(g, n.name, prev.name)
                continue
        keep.append(n)
    g.nodes = keep
    return g.validate()


def fold_matmul_scale(graph: Graph) -> Graph:
    """matmul followed by its only consumer ``x * c`` (c > 0, e.g. attention's 1/sqrt(d_head)) ->
    one matmul with ``alpha = c``: the constant joins the requantization multiplier, so the scores
    are rounded once instead of going through a second (lookup-table) requantization."""
    g = graph.copy()
    by = g.by_name()
    keep: list[Node] = []
    for n in g.nodes:
        if n.op == "unary" and n.attrs.get("fn") == "affine" and n.attrs.get("add", 0.0) == 0.0 and n.attrs["mul"] > 0:
            prev = by[n.inputs[0]]
            if prev.op == "matmul" and len(g.consumers(prev.name)) == 1 and prev.name != g.output:
                prev.attrs["alpha"] = float(prev.attrs.get("alpha", 1.0)) * float(n.attrs["mul"])
                _replace_uses(g, n.name, prev.name)
                continue
        keep.append(n)
    g.nodes = keep
    return g.validate()


def _scale_target(g: Graph, by: dict[str, Node], n: Node, removed: set[str]) -> Node | None:
    """The conv/linear whose output channels ``n`` (a per-channel constant as a depthwise 1x1 conv)
    scales, directly or through a transpose that brings the linear's features to axis 1."""
    def sole(p: Node) -> bool:
        users = [c for c in g.consumers(p.name) if c.name not in removed]
        return len(users) == 1 and p.name != g.output and "act" not in p.attrs

    prev = by[n.inputs[0]]
    if not sole(prev):
        return None
    if prev.op == "conv":
        return prev
    if prev.op == "transpose" and prev.attrs["perm"][1] == len(prev.attrs["perm"]) - 1:
        src = by[prev.inputs[0]]
        return src if src.op == "linear" and sole(src) else None
    return None


def _feature_const(by: dict[str, Node], n: Node) -> tuple[np.ndarray, bool] | None:
    """(per-feature vector, is_mul) of ``x * c`` / ``x + c`` with a ``const`` c varying along the last dim only."""
    if n.op not in ("mul", "add") or len(n.inputs) != 2 or by[n.inputs[1]].op != "const" or "act" in n.attrs:
        return None
    v = by[n.inputs[1]].params["value"]
    if v.ndim < 2 or any(d != 1 for d in v.shape[:-1]):
        return None
    return v.reshape(-1).astype(np.float64), n.op == "mul"


def fold_constant_scale(graph: Graph) -> Graph:
    """conv (or linear -> transpose) followed by a per-channel constant multiply/add (a depthwise 1x1
    conv made by capture, e.g. ConvNeXt's layer scale), or linear followed by ``x * c`` / ``x + c``
    with ``c`` per output feature (CaiT's layer scale on tokens) -> the constant folded into the
    weights and bias: one requantization instead of two, every channel keeps its own multiplier
    (an 8-bit per-tensor constant would zero the small ones), and no intermediate tensor whose
    per-tensor scale the largest channel sets. Runs before BatchNorm folding so that QAT, which
    re-folds BatchNorm from the raw conv, never sees a conv carrying both."""
    g = graph.copy()
    by = g.by_name()
    keep: list[Node] = []
    removed: set[str] = set()
    for n in g.nodes:
        target, feat = None, _feature_const(by, n)
        if n.op == "conv" and n.attrs.get("from_const"):
            target = _scale_target(g, by, n, removed)
            if target is not None:
                s, t = n.params["weight"].reshape(-1).astype(np.float64), n.params["bias"].astype(np.float64)
        elif feat is not None:
            prev = by[n.inputs[0]]
            users = [c for c in g.consumers(prev.name) if c.name not in removed]
            if prev.op == "linear" and len(users) == 1 and prev.name != g.output and "act" not in prev.attrs \
                    and feat[0].size == prev.params["weight"].shape[0]:
                target = prev
                s, t = (feat[0], 0.0) if feat[1] else (np.ones_like(feat[0]), feat[0])
        if target is None:
            keep.append(n)
            continue
        w = target.params["weight"].astype(np.float64)
        target.params["weight"] = (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        target.params["bias"] = (target.params["bias"].astype(np.float64) * s + t).astype(np.float32)
        _replace_uses(g, n.name, n.inputs[0])
        removed.add(n.name)
    g.nodes = [n for n in keep if n.op != "const" or any(n.name in c.inputs for c in keep)]  # drop folded constants
    return g.validate()


def prepare(graph: Graph) -> Graph:
    """The standard pipeline every recipe starts from."""
    return fold_matmul_scale(fuse_activations(fold_batchnorm(fold_constant_scale(graph))))
