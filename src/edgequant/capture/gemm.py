"""Capture of convolutions, Linear and BatchNorm: the layers that carry weights."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import CaptureError, UnsupportedOpError
from ..ir import Node
from .context import HANDLERS, Ctx, aten, fx_shape, pad4, pair


def _conv(ctx: Ctx, fx, args) -> Node:
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
        stride, pad, dil = (1, pair(stride, 1)[0]), (0, pair(pad, 1)[0]), (1, pair(dil, 1)[0])
    elif dims != 2:
        raise UnsupportedOpError(f"node '{fx.name}': Conv{dims}d is not supported; Conv1d/Conv2d are")
    params = {"weight": weight}
    params["bias"] = ctx.param(b) if (b is not None and ctx.is_param(b)) else np.zeros(weight.shape[0], np.float32)
    return Node(fx.name, "conv", [ctx.ref(x, fx)],
                {"stride": pair(stride), "padding": pad4(pad), "dilation": pair(dil), "groups": int(groups), "dims": dims},
                params, module=ctx.param_module(w))


def _linear(ctx: Ctx, fx, args) -> Node:
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    if not ctx.is_param(w):
        raise UnsupportedOpError(f"node '{fx.name}': linear with a computed weight (matmul of two activations) is not supported yet")
    weight = ctx.param(w)
    bias = ctx.param(b) if (b is not None and ctx.is_param(b)) else np.zeros(weight.shape[0], np.float32)
    xs = fx_shape(x) if isinstance(x, torch.fx.Node) else ()
    if len(xs) < 2:
        raise UnsupportedOpError(
            f"node '{fx.name}' (module '{ctx.param_module(w)}'): Linear on a {len(xs)}-D input {xs}; "
            "the input needs a batch dim and a feature dim (N, ..., features)"
        )
    return Node(fx.name, "linear", [ctx.ref(x, fx)], {}, {"weight": weight, "bias": bias}, module=ctx.param_module(w))


def _batchnorm(ctx: Ctx, fx, args) -> Node:
    x, w, b, mean, var = args[:5]
    if fx.target == aten.batch_norm.default:
        training, eps = args[5], args[7]
        if training:
            raise CaptureError(f"node '{fx.name}': BatchNorm in training mode; call model.eval() before quantizing")
    else:
        eps = args[6]
    c = fx_shape(fx)[1]
    params = {
        "weight": ctx.param(w) if w is not None else np.ones(c, np.float32),
        "bias": ctx.param(b) if b is not None else np.zeros(c, np.float32),
        "mean": ctx.param(mean), "var": ctx.param(var),
    }
    return Node(fx.name, "batchnorm", [ctx.ref(x, fx)], {"eps": float(eps)}, params, module=ctx.param_module(mean))


HANDLERS.update({
    aten.conv1d.default: _conv, aten.conv2d.default: _conv, aten.convolution.default: _conv,
    aten.linear.default: _linear,
    aten.batch_norm.default: _batchnorm, aten._native_batch_norm_legit_no_training.default: _batchnorm,
})
