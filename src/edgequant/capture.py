"""Capture an ``nn.Module`` into a QGraph with ``torch.export`` (survives more real models than
``fx.symbolic_trace``: control flow on shapes, functional calls, ``x.size(0)``).

Translation is a table from ATen op to a small function; an op outside it raises
``UnsupportedOpError`` naming the node, the op and what to do. No silent float fallback.
"""
from __future__ import annotations

import operator
import warnings
from typing import Callable

import numpy as np
import torch

from .capture_mha import batch_first_attention
from .errors import CaptureError, UnsupportedOpError
from .ir import Graph, Node

aten = torch.ops.aten

_IDENTITY = {
    aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.detach.default,
    aten.alias.default, aten.feature_dropout.default, aten.alpha_dropout.default,
    aten.lift_fresh_copy.default, aten._assert_tensor_metadata.default,
}


def _pair(v, n: int = 2) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        v = list(v)
        return tuple(v * n) if len(v) == 1 else tuple(v)
    return (v,) * n


def _pad4(p) -> tuple[int, int, int, int]:
    """torch (ph, pw) padding -> (top, bottom, left, right)."""
    ph, pw = _pair(p)
    return (ph, ph, pw, pw)


class _Ctx:
    def __init__(self, ep: torch.export.ExportedProgram, batch: int) -> None:
        sig = ep.graph_signature
        self.state = {**ep.state_dict, **getattr(ep, "constants", {})}
        self.param_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        self.param_of.update(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
        self.nodes: list[Node] = []
        self.alias: dict[str, str] = {}  # fx node name -> IR node name (identity ops)
        self.batch = batch
        self.consts: dict[str, object] = {}  # fx node name -> value computed from constants only (capture_shape)
        self.splits: dict[str, tuple] = {}  # chunk/split/unbind fx node -> its slices (capture_shape)
        self.const_nodes: set[str] = set()

    def is_param(self, a) -> bool:
        """A parameter, buffer, lifted constant, or a value computed from those alone."""
        return isinstance(a, torch.fx.Node) and (a.name in self.param_of or a.name in self.consts)

    is_const = is_param

    def const_tensor(self, a) -> torch.Tensor:
        return self.consts[a.name] if a.name in self.consts else self.state[self.param_of[a.name]]

    def param(self, a) -> np.ndarray:
        t = self.const_tensor(a)
        if not isinstance(t, torch.Tensor):
            raise UnsupportedOpError(f"'{a.name}' is a {type(t).__name__} of constants, not one tensor")
        return t.detach().cpu().float().numpy().copy()

    def param_module(self, a) -> str:
        if a.name not in self.param_of:
            return ""
        return self.param_of[a.name].rsplit(".", 1)[0] if "." in self.param_of[a.name] else ""

    def ref(self, a, fx: torch.fx.Node) -> str:
        if not isinstance(a, torch.fx.Node) or self.is_param(a):
            raise UnsupportedOpError(
                f"node '{fx.name}' ({fx.target}) takes a constant or parameter where edgequant "
                "expects an activation; rewrite the model so the op's inputs are activations"
            )
        return self.alias.get(a.name, a.name)


def _module_path(fx: torch.fx.Node) -> str:
    stack = fx.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self___", "")


def _shape(fx: torch.fx.Node) -> tuple[int, ...]:
    v = fx.meta.get("val")
    return tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else ()


def _conv(ctx: _Ctx, fx, args) -> Node:
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    if fx.target == aten.convolution.default:
        stride, pad, dil, transposed, _, groups = args[3], args[4], args[5], args[6], args[7], args[8]
        if transposed:
            raise UnsupportedOpError(f"node '{fx.name}': transposed convolution is not supported yet")
    else:
        stride = args[3] if len(args) > 3 else 1
        pad = args[4] if len(args) > 4 else 0
        dil = args[5] if len(args) > 5 else 1
        groups = args[6] if len(args) > 6 else 1
    if isinstance(pad, str):
        raise UnsupportedOpError(f"node '{fx.name}': string padding {pad!r}; use integer padding")
    weight = ctx.param(w) if ctx.is_param(w) else None
    if weight is None:
        raise UnsupportedOpError(f"node '{fx.name}': convolution with a computed weight is not supported")
    dims = weight.ndim - 2
    if dims == 1:  # Conv1d runs as a 2-D conv over (N, C, 1, L)
        weight = weight[:, :, None, :]
        stride, pad, dil = (1, _pair(stride, 1)[0]), (0, _pair(pad, 1)[0]), (1, _pair(dil, 1)[0])
    elif dims != 2:
        raise UnsupportedOpError(f"node '{fx.name}': Conv{dims}d is not supported; Conv1d/Conv2d are")
    params = {"weight": weight}
    params["bias"] = ctx.param(b) if (b is not None and ctx.is_param(b)) else np.zeros(weight.shape[0], np.float32)
    return Node(fx.name, "conv", [ctx.ref(x, fx)],
                {"stride": _pair(stride), "padding": _pad4(pad), "dilation": _pair(dil), "groups": int(groups), "dims": dims},
                params, module=ctx.param_module(w))


def _linear(ctx: _Ctx, fx, args) -> Node:
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    if not ctx.is_param(w):
        raise UnsupportedOpError(f"node '{fx.name}': linear with a computed weight (matmul of two activations) is not supported yet")
    weight = ctx.param(w)
    bias = ctx.param(b) if (b is not None and ctx.is_param(b)) else np.zeros(weight.shape[0], np.float32)
    xs = _shape(x) if isinstance(x, torch.fx.Node) else ()
    if len(xs) < 2:
        raise UnsupportedOpError(
            f"node '{fx.name}' (module '{ctx.param_module(w)}'): Linear on a {len(xs)}-D input {xs}; "
            "the input needs a batch dim and a feature dim (N, ..., features)"
        )
    return Node(fx.name, "linear", [ctx.ref(x, fx)], {}, {"weight": weight, "bias": bias}, module=ctx.param_module(w))


def _batchnorm(ctx: _Ctx, fx, args) -> Node:
    x, w, b, mean, var = args[:5]
    if fx.target == aten.batch_norm.default:
        training, eps = args[5], args[7]
        if training:
            raise CaptureError(f"node '{fx.name}': BatchNorm in training mode; call model.eval() before quantizing")
    else:
        eps = args[6]
    c = _shape(fx)[1]
    params = {
        "weight": ctx.param(w) if w is not None else np.ones(c, np.float32),
        "bias": ctx.param(b) if b is not None else np.zeros(c, np.float32),
        "mean": ctx.param(mean), "var": ctx.param(var),
    }
    return Node(fx.name, "batchnorm", [ctx.ref(x, fx)], {"eps": float(eps)}, params, module=ctx.param_module(mean))


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
    sa, sb, so = _shape(a), _shape(b), _shape(fx)
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
    if isinstance(x, torch.fx.Node) and ctx.is_param(c) and _fold_channel_scale(ctx, fx, x, ctx.param(c)):
        return None  # folded into the Linear/Conv that produces x
    raise UnsupportedOpError(
        f"node '{fx.name}': multiply by a constant tensor or parameter is supported only as a per-channel scale "
        "directly after a Linear/Conv (through transposes; folded into its weights, e.g. ConvNeXt's layer scale); "
        "otherwise only activation * activation and activation * scalar")


def _fold_channel_scale(ctx: _Ctx, fx, x, c: np.ndarray) -> bool:
    """``x * c`` with ``c`` varying along one axis of ``x`` only (a layer scale): if ``x`` is a
    Linear/Conv output (through transposes, each with this one use), scale that layer's output
    channels instead -- W[o] *= c[o], b[o] *= c[o] -- and make the multiply an alias of ``x``."""
    so = _shape(fx)
    if c.ndim > len(so) or _shape(x) != so:
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


def _const_scalar(ctx: _Ctx, v):
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
    sa, sb = _shape(a), _shape(b)
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


def _cat(ctx, fx, args):
    tensors = args[0]
    axis = args[1] if len(args) > 1 else fx.kwargs.get("dim", 0)
    ndim = len(_shape(fx))
    axis = axis % ndim
    if axis == 0:
        raise UnsupportedOpError(f"node '{fx.name}': concatenation along the batch axis is not supported")
    return Node(fx.name, "cat", [ctx.ref(t, fx) for t in tensors], {"axis": int(axis)})


def _maxpool(ctx, fx, args):
    k = _pair(args[1])
    stride = _pair(args[2]) if len(args) > 2 and args[2] else k
    pad = _pad4(args[3] if len(args) > 3 else 0)
    dil = _pair(args[4] if len(args) > 4 else 1)
    ceil = bool(args[5]) if len(args) > 5 else False
    return Node(fx.name, "maxpool", [ctx.ref(args[0], fx)],
                {"kernel": k, "stride": stride, "padding": pad, "dilation": dil, "ceil_mode": ceil})


def _avgpool(ctx, fx, args):
    k = _pair(args[1])
    stride = _pair(args[2]) if len(args) > 2 and args[2] else k
    pad = _pad4(args[3] if len(args) > 3 else 0)
    ceil = bool(args[4]) if len(args) > 4 else False
    cip = bool(args[5]) if len(args) > 5 else True
    if len(args) > 6 and args[6] is not None:
        raise UnsupportedOpError(f"node '{fx.name}': avg_pool2d with divisor_override is not supported")
    return Node(fx.name, "avgpool", [ctx.ref(args[0], fx)],
                {"kernel": k, "stride": stride, "padding": pad, "ceil_mode": ceil, "count_include_pad": cip})


def _adaptive_avg(ctx, fx, args):
    out = _pair(args[1])
    ins = _shape(args[0])
    if tuple(out) == (1, 1):
        return Node(fx.name, "mean", [ctx.ref(args[0], fx)], {"keepdim": True})
    if ins[2] % out[0] == 0 and ins[3] % out[1] == 0:  # evenly divisible: a plain average pool
        k = (ins[2] // out[0], ins[3] // out[1])
        return Node(fx.name, "avgpool", [ctx.ref(args[0], fx)],
                    {"kernel": k, "stride": k, "padding": (0, 0, 0, 0), "ceil_mode": False, "count_include_pad": True})
    raise UnsupportedOpError(f"node '{fx.name}': adaptive_avg_pool2d to {out} from {ins[2:]} (not evenly divisible)")


def _mean(ctx, fx, args):
    dims = args[1] if len(args) > 1 else fx.kwargs.get("dim")
    keep = bool(args[2]) if len(args) > 2 else bool(fx.kwargs.get("keepdim", False))
    ins = _shape(args[0])
    nd = len(ins)
    dims = sorted(d % nd for d in (dims if isinstance(dims, (list, tuple)) else [dims]))
    if nd == 4 and dims == [2, 3]:
        return Node(fx.name, "mean", [ctx.ref(args[0], fx)], {"keepdim": keep})
    if nd == 3 and dims == [2]:  # Conv1d features (N, C, L) -> mean over L
        return Node(fx.name, "mean", [ctx.ref(args[0], fx)], {"keepdim": keep})
    raise UnsupportedOpError(f"node '{fx.name}': mean over dims {dims} of a {nd}-D tensor; only spatial (global) mean is supported")


def _reshape(ctx, fx, args):
    out = _shape(fx)
    ins = _shape(args[0])
    if not out or not ins or out[0] != ins[0]:
        raise UnsupportedOpError(
            f"node '{fx.name}' ({fx.target}): reshape {ins} -> {out} changes the batch dimension; "
            "edgequant needs dim 0 to stay the batch"
        )
    return Node(fx.name, "reshape", [ctx.ref(args[0], fx)], {"shape": tuple(out[1:])})


def _pad(ctx, fx, args):
    p = list(args[1])
    mode = args[2] if len(args) > 2 else fx.kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else fx.kwargs.get("value", 0.0)
    if fx.target == aten.constant_pad_nd.default:
        mode, value = "constant", (args[2] if len(args) > 2 else 0.0)
    if mode != "constant":
        raise UnsupportedOpError(f"node '{fx.name}': {mode} padding is not supported; only constant padding")
    nd = len(_shape(args[0]))
    pads = [[0, 0] for _ in range(nd)]
    for i in range(len(p) // 2):  # torch lists pads last dim first
        pads[nd - 1 - i] = [int(p[2 * i]), int(p[2 * i + 1])]
    if pads[0] != [0, 0]:
        raise UnsupportedOpError(f"node '{fx.name}': padding the batch dimension is not supported")
    if any(v < 0 for pr in pads for v in pr):
        raise UnsupportedOpError(f"node '{fx.name}': negative padding (cropping) is not supported")
    return Node(fx.name, "pad", [ctx.ref(args[0], fx)], {"pads": [tuple(pr) for pr in pads], "value": float(value or 0.0)})


def _matmul(ctx, fx, args):
    """Product of two activations (attention scores, attention-weighted values)."""
    a, b = args[0], args[1]
    if ctx.is_param(a) or ctx.is_param(b):
        raise UnsupportedOpError(f"node '{fx.name}': matmul with a parameter; use nn.Linear for activation x weight")
    sa, sb, so = _shape(a), _shape(b), _shape(fx)
    if len(sa) < 3 or len(sa) != len(sb) or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        raise UnsupportedOpError(
            f"node '{fx.name}' ({fx.target}): matmul of {sa} and {sb}; edgequant supports (N, ..., M, K) @ (N, ..., K, N') "
            "with equal leading dims (no broadcasting) -- expand/reshape the operands first")
    return Node(fx.name, "matmul", [ctx.ref(a, fx), ctx.ref(b, fx)], {"alpha": 1.0})


def _softmax(ctx, fx, args):
    nd = len(_shape(fx))
    axis = int(args[1] if len(args) > 1 else fx.kwargs.get("dim", -1)) % nd
    if axis != nd - 1:
        raise UnsupportedOpError(
            f"node '{fx.name}' in module '{_module_path(fx)}': softmax over axis {axis} of a {nd}-D tensor; "
            "edgequant's integer softmax runs over the last axis only -- transpose so the axis is last")
    return Node(fx.name, "softmax", [ctx.ref(args[0], fx)], {"axis": -1})


def _layer_norm(ctx, fx, args):
    x, shape = args[0], list(args[1])
    w = args[2] if len(args) > 2 else None
    b = args[3] if len(args) > 3 else None
    eps = float(args[4]) if len(args) > 4 else float(fx.kwargs.get("eps", 1e-5))
    if len(shape) != 1:
        raise UnsupportedOpError(
            f"node '{fx.name}' in module '{_module_path(fx)}': LayerNorm over the last {len(shape)} dims {tuple(shape)}; "
            "edgequant normalises over the last dim only -- reshape so the normalised features are one dim")
    d = int(shape[0])
    for p, what in ((w, "weight"), (b, "bias")):
        if p is not None and not ctx.is_param(p):
            raise UnsupportedOpError(f"node '{fx.name}': LayerNorm with a computed {what} is not supported")
    params = {"weight": ctx.param(w) if w is not None else np.ones(d, np.float32),
              "bias": ctx.param(b) if b is not None else np.zeros(d, np.float32)}
    return Node(fx.name, "layernorm", [ctx.ref(x, fx)], {"eps": eps}, params,
                module=ctx.param_module(w) if w is not None else "")


def _permute(ctx, fx, args):
    nd = len(_shape(args[0]))
    if fx.target == aten.permute.default:
        perm = [int(p) % nd for p in args[1]]
    else:  # transpose(d0, d1)
        perm = list(range(nd))
        d0, d1 = int(args[1]) % nd, int(args[2]) % nd
        perm[d0], perm[d1] = perm[d1], perm[d0]
    if sorted(perm) != list(range(nd)) or perm[0] != 0:
        raise UnsupportedOpError(
            f"node '{fx.name}' in module '{_module_path(fx)}': permutation {tuple(perm)} moves the batch dim; "
            "edgequant needs dim 0 to stay the batch")
    return Node(fx.name, "transpose", [ctx.ref(args[0], fx)], {"perm": tuple(perm)})


HANDLERS: dict = {
    aten.conv1d.default: _conv, aten.conv2d.default: _conv, aten.convolution.default: _conv,
    aten.linear.default: _linear,
    aten.batch_norm.default: _batchnorm, aten._native_batch_norm_legit_no_training.default: _batchnorm,
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
    aten.cat.default: _cat, aten.concat.default: _cat,
    aten.max_pool2d.default: _maxpool, aten.max_pool2d_with_indices.default: _maxpool,
    aten.avg_pool2d.default: _avgpool,
    aten.adaptive_avg_pool2d.default: _adaptive_avg,
    aten.mean.dim: _mean,
    aten.flatten.using_ints: _reshape, aten.view.default: _reshape, aten.reshape.default: _reshape,
    aten._unsafe_view.default: _reshape, aten.squeeze.dim: _reshape, aten.squeeze.dims: _reshape,
    aten.unsqueeze.default: _reshape,
    aten.pad.default: _pad, aten.constant_pad_nd.default: _pad,
    aten.matmul.default: _matmul, aten.bmm.default: _matmul,
    aten.softmax.int: _softmax, aten._softmax.default: _softmax,
    aten.layer_norm.default: _layer_norm,
    aten.transpose.int: _permute, aten.permute.default: _permute,
}


def _export(model: torch.nn.Module, example) -> torch.export.ExportedProgram:
    args, kwargs = ((), dict(example)) if isinstance(example, dict) else ((example,), None)  # dict: keyword inputs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(model, args, kwargs, strict=False)
        except Exception as e:  # torch raises many types here; all mean "could not trace"
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CaptureError(
                f"torch.export could not trace {type(model).__name__}: {msg}. The model must run "
                "forward(x) on one tensor input and return one tensor; data-dependent Python control "
                "flow must be removed or rewritten with torch.cond."
            ) from e


def _live(graph: torch.fx.Graph) -> set[str]:
    """Names of the fx nodes the output depends on."""
    live: set[str] = set()
    todo = [n for n in graph.nodes if n.op == "output"]
    while todo:
        n = todo.pop()
        if n.name in live:
            continue
        live.add(n.name)
        todo.extend(n.all_input_nodes)
    return live


def capture(model: torch.nn.Module, example) -> Graph:
    """Trace ``model`` on ``example`` (one tensor, batch in dim 0; or a dict of keyword inputs,
    see ``capture_hf``) into a validated QGraph."""
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example, dict):
        example = capture_hf.example_feeds(example)
    elif not isinstance(example, torch.Tensor) or example.ndim < 2:
        raise CaptureError(f"example input must be a tensor (N, ...) with a batch dim, got {getattr(example, 'shape', type(example))}")
    else:
        example = example.detach().float().cpu()
        if example.shape[0] < 2:  # export specializes size-1 dims; use batch 2 so reshapes keep the batch
            example = torch.cat([example, example], 0)
    was_training = model.training
    model.eval()
    try:
        # nn.MultiheadAttention as plain batch-first ops; nn.LSTM/nn.GRU as one rnn op per layer-direction
        ep = _export(capture_rnn.recurrent_ops(batch_first_attention(model)), example)
    finally:
        model.train(was_training)
    ctx = _Ctx(ep, capture_hf.batch_of(example))
    inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name not in ctx.param_of]
    if isinstance(example, dict):
        inputs = capture_hf.prologue(ctx, ep, example)  # integer/mask inputs, the mask's derived values
    elif len(inputs) != 1:
        raise CaptureError(f"the model takes {len(inputs)} tensor inputs; edgequant supports exactly one")
    out_name = None
    live = _live(ep.graph)
    for fx in ep.graph.nodes:
        if fx.op == "placeholder":
            if fx.name not in ctx.param_of:
                ctx.nodes.append(Node(ctx.alias.get(fx.name, fx.name), "input", [], capture_hf.input_attrs(ctx, fx), {},
                                      _shape(fx)))
            continue
        if fx.op == "output":
            outs = fx.args[0]
            if len(outs) != 1:
                raise CaptureError(f"the model returns {len(outs)} outputs; edgequant supports exactly one tensor")
            out_name = ctx.ref(outs[0], fx)
            continue
        if fx.op != "call_function":
            raise UnsupportedOpError(f"node '{fx.name}': fx op {fx.op} is not supported")
        if fx.name not in live:  # its value never reaches the output (e.g. attention weights nobody reads)
            continue
        target = fx.target
        if (capture_rnn.intercept(ctx, fx) or capture_hf.intercept(ctx, fx)  # virtual h_n/time-major views; masks
                or capture_shape.intercept(ctx, fx)):  # constants, chunk/split
            continue
        if target in _IDENTITY or target is operator.getitem:
            if target is operator.getitem and fx.args[1] != 0:
                raise UnsupportedOpError(f"node '{fx.name}': uses output {fx.args[1]} of {fx.args[0].target}; only the first output is supported")
            src = fx.args[0]
            ctx.alias[fx.name] = ctx.ref(src, fx) if isinstance(src, torch.fx.Node) else src
            continue
        if target not in HANDLERS:
            module = _module_path(fx)
            where = f" in module '{module}'" if module else ""
            raise UnsupportedOpError(
                f"node '{fx.name}'{where} uses {target}, which edgequant cannot run as integer "
                "arithmetic yet. Supported: Conv1d/2d, Linear, BatchNorm, ReLU, ReLU6/Hardtanh, clamp, "
                "add, mul (with (N,C,1,1) broadcasting), sigmoid, tanh, hardsigmoid, hardswish, SiLU, GELU, Mish, "
                "LeakyReLU, ELU, arithmetic with scalar constants and constant tensors (parameters), cat, max/avg pooling, global "
                "mean, flatten/reshape, constant pad, slicing (x[:, a:b], x[:, 0], chunk/split/unbind), nearest/bilinear "
                "upsampling, dropout. "
                "Replace the op, or keep that part of the model outside the quantized module."
            )
        node = HANDLERS[target](ctx, fx, list(fx.args))
        if node is None:  # an alias of an earlier node: a layer scale folded into its layer, a whole-batch slice
            continue
        node.shape = _shape(fx)
        if not node.module:
            node.module = _module_path(fx)
        ctx.nodes.append(node)
    if out_name is None:
        raise CaptureError("the traced graph has no output")
    if out_name in ctx.splits or out_name not in {n.name for n in ctx.nodes}:
        raise CaptureError(f"the model's output '{out_name}' is not computed from the input (a constant, or the tuple of a "
                           "split); return one tensor that depends on the input")
    names = [ctx.alias.get(n.name, n.name) for n in inputs]
    graph = Graph(ctx.nodes, names[0], out_name, names[1:])
    return capture_hf.finish(graph).validate()


from . import capture_hf  # noqa: E402  (keyword inputs, embeddings, padding masks, reductions)
from . import capture_shape  # noqa: E402  (registers slicing/upsampling/constant handlers into HANDLERS)
from . import capture_rnn  # noqa: E402  (nn.LSTM/nn.GRU: the rnn op's handler and the virtual layouts)
