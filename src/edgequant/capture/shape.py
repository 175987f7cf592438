"""Capture of data-movement ops and of arithmetic with constant tensors (registered into
``capture.HANDLERS``; ``capture`` calls ``intercept`` first for every call).

* ``chunk``/``split``/``split_with_sizes``/``tensor_split``/``unbind``: not nodes themselves; each
  ``getitem`` of their result becomes a ``slice`` (plus a ``reshape`` dropping the axis for ``unbind``).
  ``select`` (``x[:, 0]``) is ``slice`` + ``reshape``; ``slice``/``narrow`` are ``slice``.
  Slicing is pure data movement on the 8-bit tensor: the same qparams in and out.
* ``upsample_nearest2d`` (and ``nearest-exact``, the same for whole factors) with integer factors
  (``np.repeat``: data movement) and ``upsample_bilinear2d`` (TFLite's integer
  ``ResizeBilinearInteger`` arithmetic, same qparams).
* Constants: a call whose tensor arguments are all parameters/buffers/constants is evaluated
  once here (``class_token.expand(n, -1, -1)``, ``pos_embedding[:, :T]``, weight-norm weights).
  Why not at run time: it is not activation arithmetic, and folding keeps every later stage
  unaware of it. A constant meeting an activation becomes (see ``_binary``):
  - ``x * c`` / ``x / c`` with ``c`` along one axis right after the Linear/Conv making ``x``:
    folded into its weights at capture (``capture._fold_channel_scale``);
  - else with ``c`` per channel ((C, 1, 1) on (N, C, H, W)): a depthwise 1x1 conv (weight ``c``),
    which keeps one multiplier per channel (an 8-bit per-tensor ``c`` would zero small channels)
    and runs/exports as any conv; ``passes.fold_constant_scale`` folds it into a conv before it;
  - ``x + c`` / ``x - c`` per channel: a depthwise 1x1 conv with weight 1 and an int32 bias;
  - any other broadcastable ``c`` (ViT's (1, T, d) position embedding): a ``const`` node (int8,
    per-tensor qparams of its own range) feeding ``add``/``mul``, which broadcast size-1 dims;
  - ``cat`` with a constant (ViT's class token): a ``const`` node broadcast over the batch.
* ``scaled_dot_product_attention`` (unmasked): transpose + matmul + softmax + matmul IR nodes.
"""
from __future__ import annotations

import operator

import numpy as np
import torch

from ..errors import UnsupportedOpError
from ..ir import Node
from .context import HANDLERS, Ctx, aten, fx_shape, module_path
from .elementwise import fold_channel_scale
from .layout import cat, reshape

INT64_MAX = 9223372036854775807


# -- constants -------------------------------------------------------------------------------------
def _node_args(v) -> list:
    if isinstance(v, torch.fx.Node):
        return [v]
    if isinstance(v, (list, tuple)):
        return [n for x in v for n in _node_args(x)]
    if isinstance(v, dict):
        return [n for x in v.values() for n in _node_args(x)]
    return []


def _subst(ctx: Ctx, v):
    if isinstance(v, torch.fx.Node):
        return ctx.const_tensor(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_subst(ctx, x) for x in v)
    if isinstance(v, dict):
        return {k: _subst(ctx, x) for k, x in v.items()}
    return v


def _fold(ctx: Ctx, fx) -> bool:
    """Evaluate ``fx`` now when every tensor it reads is a constant; True if it was."""
    nodes = _node_args(fx.args) + _node_args(fx.kwargs)
    if not nodes or not all(ctx.is_const(n) for n in nodes):
        return False
    try:
        with torch.no_grad():
            ctx.consts[fx.name] = fx.target(*_subst(ctx, fx.args), **_subst(ctx, fx.kwargs))
    except Exception as e:  # any torch error: the op cannot be evaluated on its constants
        raise UnsupportedOpError(f"node '{fx.name}' ({fx.target}) computes on constants only, and evaluating it "
                                 f"failed ({type(e).__name__}: {e}); precompute that tensor in the model") from e
    return True


def const_node(ctx: Ctx, a, fx, rank: int, value: np.ndarray | None = None) -> str:
    """An IR ``const`` node holding constant ``a`` (or ``value`` derived from it) as (1, ...) of
    ``rank`` dims, broadcast over the batch; returns its name."""
    v = np.asarray(ctx.param(a) if value is None else value, np.float32)
    if v.ndim > rank:
        raise UnsupportedOpError(f"node '{fx.name}' ({fx.target}): a constant of shape {v.shape} has more dims than the "
                                 f"activation ({rank}); edgequant broadcasts constants into activations, not the reverse")
    v = v.reshape((1,) * (rank - v.ndim) + v.shape)
    if v.shape[0] != 1:
        if v.shape[0] == ctx.batch and np.all(v == v[:1]):  # expanded over the example batch
            v = v[:1]
        else:
            raise UnsupportedOpError(f"node '{fx.name}' ({fx.target}): a constant of shape {v.shape} differs along the "
                                     "batch dim; a constant must be the same for every sample (batch dim 1)")
    if not np.all(np.isfinite(v)):
        raise UnsupportedOpError(f"node '{fx.name}': the constant operand holds NaN/inf")
    name = f"{a.name}.const" if value is None else f"{fx.name}.const"
    if name not in ctx.const_nodes:
        ctx.const_nodes.add(name)
        module = ctx.param_module(a) if a.name in ctx.param_of else module_path(fx)
        ctx.nodes.append(Node(name, "const", [], {}, {"value": v.copy()}, v.shape, module))
    return name


# -- element-wise arithmetic with a constant tensor -----------------------------------------------
def _dwconv(fx, x: str, c: int, weight: np.ndarray, bias: np.ndarray, module: str) -> Node:
    return Node(fx.name, "conv", [x], {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": c,
                                       "dims": 2, "from_const": True},
                {"weight": weight.reshape(c, 1, 1, 1).astype(np.float32), "bias": bias.astype(np.float32)}, module=module)


def _binary(kind: str):
    """add/sub/mul/div handler: the original for activation(s) and scalars, constants as above."""
    orig = HANDLERS[{"add": aten.add.Tensor, "sub": aten.sub.Tensor, "mul": aten.mul.Tensor, "div": aten.div.Tensor}[kind]]

    def f(ctx: Ctx, fx, args):
        a, b = args[0], args[1]
        ca = isinstance(a, torch.fx.Node) and ctx.is_const(a)
        cb = isinstance(b, torch.fx.Node) and ctx.is_const(b)
        if not (ca or cb):
            return orig(ctx, fx, args)
        cnode, x = (a, b) if ca else (b, a)
        v = np.asarray(ctx.param(cnode), np.float64)
        if v.size == 1:  # a one-element tensor is a scalar
            s = float(v.reshape(-1)[0])
            return orig(ctx, fx, [s, b, *args[2:]] if ca else [a, s, *args[2:]])
        if not isinstance(x, torch.fx.Node):
            raise UnsupportedOpError(f"node '{fx.name}': arithmetic of a constant tensor with a Python number")
        alpha = float(fx.kwargs.get("alpha", args[2] if len(args) > 2 else 1))
        if kind == "sub" and ca:
            raise UnsupportedOpError(f"node '{fx.name}': constant tensor minus an activation is not supported; write it "
                                     "as -(x - c) or fold the sign into the next layer")
        if kind == "div" and ca:
            raise UnsupportedOpError(f"node '{fx.name}': division of a constant tensor by an activation is not supported")
        if kind == "div" and (fx.kwargs.get("rounding_mode") is not None or np.any(v == 0)):
            raise UnsupportedOpError(f"node '{fx.name}': division by a constant tensor holding zeros, or with a rounding "
                                     "mode, is not supported")
        xs = fx_shape(x)
        vs = (1,) * (len(xs) - v.ndim) + v.shape
        if len(vs) > len(xs) or any(d not in (1, e) for d, e in zip(vs[1:], xs[1:])) or vs[0] not in (1, ctx.batch):
            raise UnsupportedOpError(f"node '{fx.name}' ({fx.target}): a constant of shape {v.shape} does not broadcast "
                                     f"into the activation {xs}; the constant must not enlarge it")
        c = {"add": v * alpha, "sub": -v * alpha, "mul": v, "div": 1.0 / v}[kind]
        if kind in ("mul", "div") and fold_channel_scale(ctx, fx, x, c.astype(np.float32)):
            return None  # a layer scale right after its Linear/Conv (through transposes): folded at capture
        xr = ctx.ref(x, fx)
        module = ctx.param_module(cnode) if cnode.name in ctx.param_of else module_path(fx)
        if len(xs) == 4 and vs[1:] == (xs[1], 1, 1) and vs[0] == 1:  # per channel: a depthwise 1x1 conv
            flat = c.reshape(-1)
            if kind in ("mul", "div"):
                return _dwconv(fx, xr, xs[1], flat, np.zeros_like(flat), module)
            return _dwconv(fx, xr, xs[1], np.ones_like(flat), flat, module)
        cn = const_node(ctx, cnode, fx, len(xs), c.reshape(vs))
        return Node(fx.name, "add" if kind in ("add", "sub") else "mul", [xr, cn], {"const_operand": True})
    return f


def _cat(ctx: Ctx, fx, args):
    tensors = list(args[0])
    if not any(isinstance(t, torch.fx.Node) and ctx.is_const(t) for t in tensors):
        return cat(ctx, fx, args)
    rank = len(fx_shape(fx))
    ins = [const_node(ctx, t, fx, rank) if ctx.is_const(t) else ctx.ref(t, fx) for t in tensors]
    axis = int(args[1] if len(args) > 1 else fx.kwargs.get("dim", 0)) % rank
    if axis == 0:
        raise UnsupportedOpError(f"node '{fx.name}': concatenation along the batch axis is not supported")
    return Node(fx.name, "cat", ins, {"axis": axis})


# -- slicing ---------------------------------------------------------------------------------------
def _axis(dim, nd: int) -> int:
    return int(dim) % nd


def slice_node(name: str, src: str, axis: int, start: int, stop: int, step: int, shape, module: str) -> Node:
    return Node(name, "slice", [src], {"axis": axis, "start": int(start), "stop": int(stop), "step": int(step)},
                shape=tuple(shape), module=module)


def slice_bounds(size: int, start, stop, step: int) -> tuple[int, int]:
    start, stop, _ = slice(start, None if stop is None or stop >= INT64_MAX else stop, step).indices(size)
    return start, max(stop, start)


def _batch_error(fx) -> UnsupportedOpError:
    return UnsupportedOpError(f"node '{fx.name}' in module '{module_path(fx)}' ({fx.target}) slices the batch dimension; "
                              "edgequant needs dim 0 to stay the batch -- slice the other dims only")


def _slice(ctx: Ctx, fx, args):
    x = args[0]
    ins = fx_shape(x)
    axis = _axis(args[1] if len(args) > 1 else fx.kwargs.get("dim", 0), len(ins))
    if fx.target == aten.narrow.default:
        start = int(args[2]) % ins[axis] if int(args[2]) < 0 else int(args[2])
        stop, step = start + int(args[3]), 1
    else:
        start = args[2] if len(args) > 2 else fx.kwargs.get("start")
        stop = args[3] if len(args) > 3 else fx.kwargs.get("end")
        step = int(args[4] if len(args) > 4 else fx.kwargs.get("step", 1) or 1)
        start, stop = slice_bounds(ins[axis], start, stop, step)
    if axis == 0:
        if (start, stop, step) == (0, ins[0], 1):  # the whole batch: nothing to do
            return _alias(ctx, fx, x)
        raise _batch_error(fx)
    return slice_node(fx.name, ctx.ref(x, fx), axis, start, stop, step, fx_shape(fx), "")


def _alias(ctx: Ctx, fx, x) -> None:
    ctx.alias[fx.name] = ctx.ref(x, fx)
    return None


def _select(ctx: Ctx, fx, args):
    x = args[0]
    ins = fx_shape(x)
    axis = _axis(args[1], len(ins))
    if axis == 0:
        raise _batch_error(fx)
    i = int(args[2]) % ins[axis]
    sl = list(ins)
    sl[axis] = 1
    ctx.nodes.append(slice_node(f"{fx.name}.slice", ctx.ref(x, fx), axis, i, i + 1, 1, sl, module_path(fx)))
    return Node(fx.name, "reshape", [f"{fx.name}.slice"], {"shape": tuple(fx_shape(fx)[1:])})


SPLITS = {aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int,
          aten.tensor_split.sections, aten.tensor_split.indices}


def _record_split(ctx: Ctx, fx) -> None:
    """Remember which slice each output of a chunk/split/unbind is; ``getitem`` builds it."""
    x, args = fx.args[0], fx.args
    ins = fx_shape(x)
    dim = args[2] if len(args) > 2 else fx.kwargs.get("dim", 0)
    if fx.target == aten.unbind.int:
        dim = args[1] if len(args) > 1 else fx.kwargs.get("dim", 0)
    axis = int(dim) % len(ins)
    n = ins[axis]
    if fx.target == aten.chunk.default:
        k = int(args[1])
        size = -(-n // k)
        sizes = [min(size, n - s) for s in range(0, n, size)]
    elif fx.target == aten.tensor_split.sections:  # the first n % k parts one longer
        k = int(args[1])
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    elif fx.target == aten.tensor_split.indices:
        cuts = [0] + [min(max(int(i) % n if int(i) < 0 else int(i), 0), n) for i in args[1]] + [n]
        sizes = [max(b - a, 0) for a, b in zip(cuts[:-1], cuts[1:])]
    elif fx.target == aten.unbind.int:
        sizes = [1] * n
    elif isinstance(args[1], (list, tuple)):
        sizes = [int(s) for s in args[1]]
    else:
        size = int(args[1])
        sizes = [min(size, n - s) for s in range(0, n, size)]
    if axis == 0:
        raise _batch_error(fx)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    ctx.splits[fx.name] = (ctx.ref(x, fx), axis, [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])],
                           fx.target == aten.unbind.int, ins)


def _split_item(ctx: Ctx, fx) -> None:
    if not fx.users:  # an output nobody reads (e.g. the rest of an unbind): nothing to compute
        return
    src, axis, parts, squeeze, ins = ctx.splits[fx.args[0].name]
    k = int(fx.args[1])
    start, stop = parts[k]
    sl = list(ins)
    sl[axis] = stop - start
    module = module_path(fx)
    if not squeeze:
        ctx.nodes.append(slice_node(fx.name, src, axis, start, stop, 1, sl, module))
        return
    ctx.nodes.append(slice_node(f"{fx.name}.slice", src, axis, start, stop, 1, sl, module))
    ctx.nodes.append(Node(fx.name, "reshape", [f"{fx.name}.slice"], {"shape": tuple(fx_shape(fx)[1:])}, {}, fx_shape(fx), module))


# -- upsampling ------------------------------------------------------------------------------------
def _upsample(mode: str):
    def f(ctx: Ctx, fx, args):
        x = args[0]
        ins, out = fx_shape(x), fx_shape(fx)
        where = f"node '{fx.name}' in module '{module_path(fx)}'"
        if len(ins) != 4:
            raise UnsupportedOpError(f"{where}: {mode} upsampling of a {len(ins)}-D tensor; only 2-D (N, C, H, W) is supported")
        if mode == "nearest":
            if out[2] % ins[2] or out[3] % ins[3]:
                raise UnsupportedOpError(f"{where}: nearest upsampling {ins[2:]} -> {out[2:]} is not by whole factors; "
                                         "use an integer scale_factor (e.g. 2)")
            return Node(fx.name, "upsample", [ctx.ref(x, fx)], {"mode": "nearest", "size": (out[2], out[3]),
                                                                 "align_corners": False})
        align = bool(args[2]) if len(args) > 2 else bool(fx.kwargs.get("align_corners", False))
        sf = args[3] if len(args) > 3 else fx.kwargs.get("scale_factors")
        if fx.target != aten.upsample_bilinear2d.vec:  # .default: (size, align_corners, scales_h, scales_w)
            sf = (args[3], args[4]) if len(args) > 4 and args[3] is not None and args[4] is not None else None
        if sf is not None and (out[2] != ins[2] * float(sf[0]) or out[3] != ins[3] * float(sf[1])):
            raise UnsupportedOpError(f"{where}: bilinear upsampling by {tuple(sf)} does not give whole output sizes "
                                     f"({ins[2:]} -> {out[2:]}); pass size=... or a factor that divides evenly")
        return Node(fx.name, "upsample", [ctx.ref(x, fx)], {"mode": "bilinear", "size": (out[2], out[3]),
                                                             "align_corners": align})
    return f


# -- attention -------------------------------------------------------------------------------------
def sdpa(ctx: Ctx, fx, args):
    """``F.scaled_dot_product_attention(q, k, v)`` on batch-first (N, ..., T, E) tensors (HF models'
    default attention) as the IR's own ops: ``softmax((q @ k^T) * scale) @ v``; the scale rides on the
    scores' matmul (``alpha``, folded into its requantization)."""
    q, k, v = args[0], args[1], args[2]
    mask = args[3] if len(args) > 3 else fx.kwargs.get("attn_mask")
    causal = bool(args[5] if len(args) > 5 else fx.kwargs.get("is_causal", False))
    if mask is not None or causal:
        raise UnsupportedOpError(f"node '{fx.name}' in module '{module_path(fx)}': scaled_dot_product_attention with an "
                                 "attention mask or is_causal; edgequant quantizes unmasked attention only")
    if fx.kwargs.get("enable_gqa", False):
        raise UnsupportedOpError(f"node '{fx.name}': scaled_dot_product_attention with enable_gqa is not supported")
    sq, sk, module = fx_shape(q), fx_shape(k), module_path(fx)
    scale = fx.kwargs.get("scale")
    scale = float(scale) if scale is not None else 1.0 / float(np.sqrt(sq[-1]))
    perm = list(range(len(sk)))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    kt_shape = tuple(sk[:-2]) + (sk[-1], sk[-2])
    scores_shape = tuple(sq[:-1]) + (sk[-2],)
    ctx.nodes.append(Node(f"{fx.name}.kT", "transpose", [ctx.ref(k, fx)], {"perm": tuple(perm)}, {}, kt_shape, module))
    ctx.nodes.append(Node(f"{fx.name}.scores", "matmul", [ctx.ref(q, fx), f"{fx.name}.kT"], {"alpha": scale}, {},
                          scores_shape, module))
    ctx.nodes.append(Node(f"{fx.name}.probs", "softmax", [f"{fx.name}.scores"], {"axis": -1}, {}, scores_shape, module))
    return Node(fx.name, "matmul", [f"{fx.name}.probs", ctx.ref(v, fx)], {"alpha": 1.0})


# -- the hook capture calls first ---------------------------------------------------------------------
def intercept(ctx: Ctx, fx) -> bool:
    """Handle ``fx`` here (constant folding, multi-output splits and their items); True if done."""
    if fx.target is operator.getitem and isinstance(fx.args[0], torch.fx.Node) and fx.args[0].name in ctx.splits:
        _split_item(ctx, fx)
        return True
    if _fold(ctx, fx):
        return True
    if fx.target in SPLITS:
        _record_split(ctx, fx)
        return True
    return False


HANDLERS.update({
    aten.add.Tensor: _binary("add"), aten.add_.Tensor: _binary("add"),
    aten.sub.Tensor: _binary("sub"), aten.mul.Tensor: _binary("mul"), aten.mul_.Tensor: _binary("mul"),
    aten.div.Tensor: _binary("div"),
    aten.cat.default: _cat, aten.concat.default: _cat,
    aten.slice.Tensor: _slice, aten.narrow.default: _slice, aten.select.int: _select,
    aten.unflatten.int: reshape,
    aten.scaled_dot_product_attention.default: sdpa,
    aten.upsample_nearest2d.vec: _upsample("nearest"), aten.upsample_nearest2d.default: _upsample("nearest"),
    aten._upsample_nearest_exact2d.vec: _upsample("nearest"),  # the same source pixels for whole factors
    aten.upsample_bilinear2d.vec: _upsample("bilinear"), aten.upsample_bilinear2d.default: _upsample("bilinear"),
})
