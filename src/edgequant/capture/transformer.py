"""Capture of the transformer ops: matmul of two activations, softmax (last axis), LayerNorm (last dim)."""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ..ir import Node
from .context import HANDLERS, aten, fx_shape, module_path


def _matmul(ctx, fx, args):
    """Product of two activations (attention scores, attention-weighted values)."""
    a, b = args[0], args[1]
    if ctx.is_param(a) or ctx.is_param(b):
        raise UnsupportedOpError(f"node '{fx.name}': matmul with a parameter; use nn.Linear for activation x weight")
    sa, sb = fx_shape(a), fx_shape(b)
    if len(sa) < 3 or len(sa) != len(sb) or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        raise UnsupportedOpError(
            f"node '{fx.name}' ({fx.target}): matmul of {sa} and {sb}; edgequant supports (N, ..., M, K) @ (N, ..., K, N') "
            "with equal leading dims (no broadcasting) -- expand/reshape the operands first")
    return Node(fx.name, "matmul", [ctx.ref(a, fx), ctx.ref(b, fx)], {"alpha": 1.0})


def _softmax(ctx, fx, args):
    nd = len(fx_shape(fx))
    axis = int(args[1] if len(args) > 1 else fx.kwargs.get("dim", -1)) % nd
    if axis != nd - 1:
        raise UnsupportedOpError(
            f"node '{fx.name}' in module '{module_path(fx)}': softmax over axis {axis} of a {nd}-D tensor; "
            "edgequant's integer softmax runs over the last axis only -- transpose so the axis is last")
    return Node(fx.name, "softmax", [ctx.ref(args[0], fx)], {"axis": -1})


def _layer_norm(ctx, fx, args):
    x, shape = args[0], list(args[1])
    w = args[2] if len(args) > 2 else None
    b = args[3] if len(args) > 3 else None
    eps = float(args[4]) if len(args) > 4 else float(fx.kwargs.get("eps", 1e-5))
    if len(shape) != 1:
        raise UnsupportedOpError(
            f"node '{fx.name}' in module '{module_path(fx)}': LayerNorm over the last {len(shape)} dims {tuple(shape)}; "
            "edgequant normalises over the last dim only -- reshape so the normalised features are one dim")
    d = int(shape[0])
    for p, what in ((w, "weight"), (b, "bias")):
        if p is not None and not ctx.is_param(p):
            raise UnsupportedOpError(f"node '{fx.name}': LayerNorm with a computed {what} is not supported")
    params = {"weight": ctx.param(w) if w is not None else np.ones(d, np.float32),
              "bias": ctx.param(b) if b is not None else np.zeros(d, np.float32)}
    return Node(fx.name, "layernorm", [ctx.ref(x, fx)], {"eps": eps}, params,
                module=ctx.param_module(w) if w is not None else "")


HANDLERS.update({
    aten.matmul.default: _matmul, aten.bmm.default: _matmul,
    aten.softmax.int: _softmax, aten._softmax.default: _softmax,
    aten.layer_norm.default: _layer_norm,
})
