"""Capture of layout and pooling: cat, max/avg pooling, global mean, reshape, constant pad, permute."""
from __future__ import annotations

from ..errors import UnsupportedOpError
from ..ir import Node
from .context import HANDLERS, aten, fx_shape, module_path, pad4, pair


def cat(ctx, fx, args):
    tensors = args[0]
    axis = args[1] if len(args) > 1 else fx.kwargs.get("dim", 0)
    ndim = len(fx_shape(fx))
    axis = axis % ndim
    if axis == 0:
        raise UnsupportedOpError(f"node '{fx.name}': concatenation along the batch axis is not supported")
    return Node(fx.name, "cat", [ctx.ref(t, fx) for t in tensors], {"axis": int(axis)})


def _maxpool(ctx, fx, args):
    k = pair(args[1])
    stride = pair(args[2]) if len(args) > 2 and args[2] else k
    pad = pad4(args[3] if len(args) > 3 else 0)
    dil = pair(args[4] if len(args) > 4 else 1)
    ceil = bool(args[5]) if len(args) > 5 else False
    return Node(fx.name, "maxpool", [ctx.ref(args[0], fx)],
                {"kernel": k, "stride": stride, "padding": pad, "dilation": dil, "ceil_mode": ceil})


def _avgpool(ctx, fx, args):
    k = pair(args[1])
    stride = pair(args[2]) if len(args) > 2 and args[2] else k
    pad = pad4(args[3] if len(args) > 3 else 0)
    ceil = bool(args[4]) if len(args) > 4 else False
    cip = bool(args[5]) if len(args) > 5 else True
    if len(args) > 6 and args[6] is not None:
        raise UnsupportedOpError(f"node '{fx.name}': avg_pool2d with divisor_override is not supported")
    return Node(fx.name, "avgpool", [ctx.ref(args[0], fx)],
                {"kernel": k, "stride": stride, "padding": pad, "ceil_mode": ceil, "count_include_pad": cip})


def _adaptive_avg(ctx, fx, args):
    out = pair(args[1])
    ins = fx_shape(args[0])
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
    ins = fx_shape(args[0])
    nd = len(ins)
    dims = sorted(d % nd for d in (dims if isinstance(dims, (list, tuple)) else [dims]))
    if nd == 4 and dims == [2, 3]:
        return Node(fx.name, "mean", [ctx.ref(args[0], fx)], {"keepdim": keep})
    if nd == 3 and dims == [2]:  # Conv1d features (N, C, L) -> mean over L
        return Node(fx.name, "mean", [ctx.ref(args[0], fx)], {"keepdim": keep})
    raise UnsupportedOpError(f"node '{fx.name}': mean over dims {dims} of a {nd}-D tensor; only spatial (global) mean is supported")


def reshape(ctx, fx, args):
    out = fx_shape(fx)
    ins = fx_shape(args[0])
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
    nd = len(fx_shape(args[0]))
    pads = [[0, 0] for _ in range(nd)]
    for i in range(len(p) // 2):  # torch lists pads last dim first
        pads[nd - 1 - i] = [int(p[2 * i]), int(p[2 * i + 1])]
    if pads[0] != [0, 0]:
        raise UnsupportedOpError(f"node '{fx.name}': padding the batch dimension is not supported")
    if any(v < 0 for pr in pads for v in pr):
        raise UnsupportedOpError(f"node '{fx.name}': negative padding (cropping) is not supported")
    return Node(fx.name, "pad", [ctx.ref(args[0], fx)], {"pads": [tuple(pr) for pr in pads], "value": float(value or 0.0)})


def _permute(ctx, fx, args):
    nd = len(fx_shape(args[0]))
    if fx.target == aten.permute.default:
        perm = [int(p) % nd for p in args[1]]
    else:  # transpose(d0, d1)
        perm = list(range(nd))
        d0, d1 = int(args[1]) % nd, int(args[2]) % nd
        perm[d0], perm[d1] = perm[d1], perm[d0]
    if sorted(perm) != list(range(nd)) or perm[0] != 0:
        raise UnsupportedOpError(
            f"node '{fx.name}' in module '{module_path(fx)}': permutation {tuple(perm)} moves the batch dim; "
            "edgequant needs dim 0 to stay the batch")
    return Node(fx.name, "transpose", [ctx.ref(args[0], fx)], {"perm": tuple(perm)})


HANDLERS.update({
    aten.cat.default: cat, aten.concat.default: cat,
    aten.max_pool2d.default: _maxpool, aten.max_pool2d_with_indices.default: _maxpool,
    aten.avg_pool2d.default: _avgpool,
    aten.adaptive_avg_pool2d.default: _adaptive_avg,
    aten.mean.dim: _mean,
    aten.flatten.using_ints: reshape, aten.view.default: reshape, aten.reshape.default: reshape,
    aten._unsafe_view.default: reshape, aten.squeeze.dim: reshape, aten.squeeze.dims: reshape,
    aten.unsqueeze.default: reshape,
    aten.pad.default: _pad, aten.constant_pad_nd.default: _pad,
    aten.transpose.int: _permute, aten.permute.default: _permute,
})
