"""Capture of element-wise ops: clamps (ReLU/ReLU6/Hardtanh), functions of one activation (lookup
tables), arithmetic with scalars, add/mul of activations, and per-channel layer scales folded into
the layer before them."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import UnsupportedOpError
from ..ir import Node
from .context import HANDLERS, Ctx, aten, fx_shape


def _clamp(lo: float, hi: float) -> Callable:
    def f(ctx, fx, args):
        return Node(fx.name, "clamp", [ctx.ref(args[0], fx)], {"lo": lo, "hi": hi})
    return f


def _hardtanh(ctx, fx, args):
    lo = float(args[1]) if len(args) > 1 else -1.0
    hi = float(args[2]) if len(args) > 2 else 1.0
    return Node(fx.name, "clamp", [ctx.ref(args[0], fx)], {"lo": lo, "hi": hi})


def _clamp_op(ctx, fx, args):
    lo = args[1] if len(args) > 1 else fx.kwargs.get("min")
    hi = args[2] if len(args) > 2 else fx.kwargs.get("max")
    if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
        raise UnsupportedOpError(f"node '{fx.name}': clamp with tensor bounds is not supported")
    return Node(fx.name, "clamp", [ctx.ref(args[0], fx)],
                {"lo": float(lo) if lo is not None else float("-inf"), "hi": float(hi) if hi is not None else float("inf")})


def _unary(fn: str, **defaults) -> Callable:
    """An element-wise function of one activation (lowered to a lookup table); ``defaults`` name
    the op's extra positional arguments in order, with their defaults."""
    def f(ctx, fx, args):
        attrs = {"fn": fn}
        for k, (key, default) in enumerate(defaults.items()):
            v = args[1 + k] if len(args) > 1 + k else fx.kwargs.get(key, default)
            attrs[key] = v if isinstance(v, str) else float(v)
        if fn == "gelu":
            attrs["approximate"] = str(fx.kwargs.get("approximate", args[1] if len(args) > 1 else "none"))
        return Node(fx.name, "unary", [ctx.ref(args[0], fx)], attrs)
    return f


def _scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _affine(ctx, fx, x, mul: float, add: float) -> Node:
    """``x * mul + add`` with constant scalars: one more element-wise function (a lookup table)."""
    if not (np.isfinite(mul) and np.isfinite(add)):
        raise UnsupportedOpError(f"node '{fx.name}' ({fx.target}): a non-finite constant ({mul}, {add})")
    return Node(fx.name, "unary", [ctx.ref(x, fx)], {"fn": "affine", "mul": float(mul), "add": float(add)})


def _broadcast_ok(fx, a, b) -> None:
    sa, sb, so = fx_shape(a), fx_shape(b), fx_shape(fx)
    if len(sa) != len(so) or len(sb) != len(so) or sa[0] != so[0] or sb[0] != so[0]:
        raise UnsupportedOpError(
            f"node '{fx.name}' ({fx.target}): {sa} with {sb}; broadcasting is supported between tensors of the "
            "same rank and batch (e.g. (N, C, 1, 1) * (N, C, H, W))")


def _mul(ctx, fx, args):
    a, b = _const_scalar(ctx, args[0]), _const_scalar(ctx, args[1])
    if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node) and not (ctx.is_param(a) or ctx.is_param(b)):
        _broadcast_ok(fx, a, b)
        return Node(fx.name, "mul", [ctx.ref(a, fx), ctx.ref(b, fx)])
    if _scalar(b):
        return _affine(ctx, fx, a, float(b), 0.0)
    if _scalar(a):
        return _affine(ctx, fx, b, float(a), 0.0)
    x, c = (a, b) if ctx.is_param(b) else (b, a)
    if isinstance(x, torch.fx.Node) and ctx.is_param(c) and fold_channel_scale(ctx, fx, x, ctx.param(c)):
        return None  # folded into the Linear/Conv that produces x
    raise UnsupportedOpError(
        f"node '{fx.name}': multiply by a constant tensor or parameter is supported only as a per-channel scale "
        "directly after a Linear/Conv (through transposes; folded into its weights, e.g. ConvNeXt's layer scale); "
        "otherwise only activation * activation and activation * scalar")


def fold_channel_scale(ctx: Ctx, fx, x, c: np.ndarray) -> bool:
    """``x * c`` with ``c`` varying along one axis of ``x`` only (a layer scale): if ``x`` is a
    Linear/Conv output (through transposes, each with this one use), scale that layer's output
    channels instead -- W[o] *= c[o], b[o] *= c[o] -- and make the multiply an alias of ``x``."""
    so = fx_shape(fx)
    if c.ndim > len(so) or fx_shape(x) != so:
        return False
    full = c.reshape((1,) * (len(so) - c.ndim) + c.shape)
    axes = [k for k, n in enumerate(full.shape) if n != 1]
    if len(axes) != 1 or axes[0] == 0 or full.shape[axes[0]] != so[axes[0]]:
        return False
    k, scale = axes[0], full.reshape(-1).astype(np.float64)
    by = {n.name: n for n in ctx.nodes}
    node = x
    while True:
        if len(node.users) != 1:
            return False
        ir = by.get(node.name)
        if ir is None and node.name in ctx.alias and node.args and isinstance(node.args[0], torch.fx.Node):
            node = node.args[0]  # an identity op (dropout, clone, ...)
            continue
        if ir is not None and ir.op == "transpose":
            k, node = ir.attrs["perm"][k], node.args[0]
            continue
        if ir is None or ir.op not in ("linear", "conv") or k != (len(ir.shape) - 1 if ir.op == "linear" else 1):
            return False
        w = ir.params["weight"].astype(np.float64)
        ir.params["weight"] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        ir.params["bias"] = (ir.params["bias"].astype(np.float64) * scale).astype(np.float32)
        ctx.alias[fx.name] = ctx.ref(x, fx)
        return True


def _const_scalar(ctx: Ctx, v):
    """A one-element constant tensor (``x / torch.tensor(8.0)``) as a Python float; else ``v``."""
    if ctx.is_param(v):
        t = ctx.param(v)
        if t.size == 1:
            return float(t.reshape(-1)[0])
    return v


def _div(ctx, fx, args):
    a, b = args[0], _const_scalar(ctx, args[1])
    if fx.kwargs.get("rounding_mode") is not None or not _scalar(b) or float(b) == 0.0:
        raise UnsupportedOpError(f"node '{fx.name}': only division of an activation by a non-zero scalar is supported")
    return _affine(ctx, fx, a, 1.0 / float(b), 0.0)


def _sub(ctx, fx, args):
    a, b = args[0], args[1]
    alpha = float(fx.kwargs.get("alpha", args[2] if len(args) > 2 else 1))
    if fx.target == aten.rsub.Scalar:  # b - alpha * a
        return _affine(ctx, fx, a, -alpha, float(b))
    if _scalar(b):
        return _affine(ctx, fx, a, 1.0, -alpha * float(b))
    if _scalar(a):
        return _affine(ctx, fx, b, -alpha, float(a))
    raise UnsupportedOpError(f"node '{fx.name}': subtraction of two tensors is not supported yet; only tensor - scalar")


def _add(ctx, fx, args):
    a, b = args[0], args[1]
    alpha = fx.kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    if _scalar(b) and isinstance(a, torch.fx.Node):
        return _affine(ctx, fx, a, 1.0, float(alpha) * float(b))
    if _scalar(a) and isinstance(b, torch.fx.Node) and alpha == 1:
        return _affine(ctx, fx, b, 1.0, float(a))
    if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)) or alpha != 1:
        raise UnsupportedOpError(
            f"node '{fx.name}': add of a constant tensor (or with alpha) is not supported yet; "
            "only tensor + tensor and tensor + scalar"
        )
    sa, sb = fx_shape(a), fx_shape(b)
    if sa != sb and not _broadcastable(sa, sb):
        raise UnsupportedOpError(
            f"node '{fx.name}': add with broadcasting {sa} + {sb} is not supported: the two tensors need the same "
            "rank and batch, and every other dim equal or 1 in one of them -- reshape/unsqueeze the smaller one")
    return Node(fx.name, "add", [ctx.ref(a, fx), ctx.ref(b, fx)])


def _broadcastable(sa: tuple[int, ...], sb: tuple[int, ...]) -> bool:
    """Size-1 broadcasting the integer add kernels (NumPy/torch), ONNX Add and TFLite ADD share:
    same rank, same batch, each other dim equal or 1 on one side (e.g. (N,1,H,W) + (N,C,H,W))."""
    return (len(sa) == len(sb) and sa[0] == sb[0]
            and all(x == y or 1 in (x, y) for x, y in zip(sa[1:], sb[1:])))


HANDLERS.update({
    aten.relu.default: _clamp(0.0, float("inf")), aten.relu_.default: _clamp(0.0, float("inf")),
    aten.relu6.default: _clamp(0.0, 6.0), aten.hardtanh.default: _hardtanh, aten.hardtanh_.default: _hardtanh,
    aten.clamp.default: _clamp_op, aten.clip.default: _clamp_op,
    aten.add.Tensor: _add, aten.add_.Tensor: _add, aten.add.Scalar: _add,
    aten.sub.Tensor: _sub, aten.sub.Scalar: _sub, aten.rsub.Scalar: _sub,
    aten.mul.Tensor: _mul, aten.mul_.Tensor: _mul, aten.mul.Scalar: _mul,
    aten.div.Tensor: _div, aten.div.Scalar: _div,
    aten.sigmoid.default: _unary("sigmoid"), aten.sigmoid_.default: _unary("sigmoid"),
    aten.tanh.default: _unary("tanh"), aten.tanh_.default: _unary("tanh"),
    aten.hardsigmoid.default: _unary("hardsigmoid"), aten.hardsigmoid_.default: _unary("hardsigmoid"),
    aten.hardswish.default: _unary("hardswish"), aten.hardswish_.default: _unary("hardswish"),
    aten.silu.default: _unary("silu"), aten.silu_.default: _unary("silu"),
    aten.gelu.default: _unary("gelu"), aten.mish.default: _unary("mish"),
    aten.leaky_relu.default: _unary("leaky_relu", alpha=0.01), aten.leaky_relu_.default: _unary("leaky_relu", alpha=0.01),
    aten.elu.default: _unary("elu", alpha=1.0, scale=1.0, input_scale=1.0),
    aten.elu_.default: _unary("elu", alpha=1.0, scale=1.0, input_scale=1.0),
})
