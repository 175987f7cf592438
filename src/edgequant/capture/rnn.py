"""``nn.LSTM`` / ``nn.GRU`` rewritten, before tracing, into one captured op per layer-direction.

Why: ``torch.export`` unrolls PyTorch's recurrent modules into ``aten.lstm``/``aten.gru`` calls with
``aten.zeros`` initial states, none of which is activation arithmetic edgequant can quantize piece
by piece (the cell state must stay 16-bit, the gates run on fixed grids). As for
``nn.MultiheadAttention`` (``capture.mha``), a copy of the model gets each recurrent module replaced
by :class:`RecurrentOps`, which computes the same function from the same parameters with one
``edgequant::rnn`` custom op per layer and direction (an IR ``rnn`` node: batch-first (N, T, I) in,
(N, T, H) out). Everything around it is plain ops capture already knows: ``cat`` of the two
directions, ``x[:, -1]`` for the last step.

Layouts that put the batch outside dim 0 never become IR tensors; ``intercept`` keeps them virtual:

* ``h_n``/``c_n`` are (layers*dirs, N, H): a *stack* of per-batch (N, H) tensors. Indexing it
  (``h_n[-1]``, ``h_n[-2:]``, ``h_n.squeeze(0)``, ``unbind``) picks items; ``h_n.transpose(0, 1)`` /
  ``permute(1, 0, 2)`` builds the batch-first (N, L*D, H) tensor.
* ``batch_first=False``: ``x.transpose(0, 1)`` of a batch-first tensor is a *time-major* view;
  transposing back, ``y[t]`` and ``y[a:b]`` act on dim 1 of the batch-first tensor.

Anything else done to a virtual tensor is refused naming the node. Initial states must be
constants (zero, or learned parameters the same for every sample); ``proj_size`` and unbatched
(2-D) inputs are refused by name. The user's model is never modified: a copy is.
"""
from __future__ import annotations

import copy
import operator

import numpy as np
import torch
import torch.nn as nn

from ..errors import UnsupportedOpError
from ..ir import Node
from ..rnn_float import rnn_layer
from .context import HANDLERS, Ctx, aten, fx_shape, module_path
from .shape import slice_bounds, slice_node


@torch.library.custom_op("edgequant::rnn", mutates_args=())
def rnn_op(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor,
           h0: torch.Tensor, c0: torch.Tensor, cell: str, reverse: bool, output: str) -> torch.Tensor:
    return rnn_layer(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, output).contiguous()


@rnn_op.register_fake
def _rnn_fake(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cell, reverse, output):
    return x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1])


class RecurrentOps(nn.Module):
    """The function of an ``nn.LSTM``/``nn.GRU`` in eval mode (no inter-layer dropout), one
    ``edgequant::rnn`` op per layer-direction; returns what the original returns."""

    def __init__(self, m: nn.RNNBase, name: str) -> None:
        super().__init__()
        self.name = name
        self.cell = "lstm" if isinstance(m, nn.LSTM) else "gru"
        self.layers, self.dirs, self.hidden = m.num_layers, 2 if m.bidirectional else 1, m.hidden_size
        self.batch_first = m.batch_first
        for l in range(self.layers):
            for d in range(self.dirs):
                sfx = f"_l{l}" + ("_reverse" if d else "")
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    p = getattr(m, kind + sfx, None)
                    if p is None:  # bias=False: zero biases (buffers: nothing to train)
                        rows = getattr(m, "weight_ih" + sfx).shape[0]
                        self.register_buffer(kind + sfx, torch.zeros(rows))
                    else:
                        setattr(self, kind + sfx, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
        self.register_buffer("zero_state", torch.zeros(1, m.hidden_size))

    def _p(self, kind: str, l: int, d: int) -> torch.Tensor:
        return getattr(self, f"{kind}_l{l}" + ("_reverse" if d else ""))

    def forward(self, x: torch.Tensor, hx=None):
        kind = "nn.LSTM" if self.cell == "lstm" else "nn.GRU"
        if x.dim() != 3:
            raise UnsupportedOpError(f"module '{self.name}' ({kind}) gets a {x.dim()}-D input; edgequant captures batched "
                                     "(N, T, F) sequences (or (T, N, F) with batch_first=False) -- add the batch dim")
        if not self.batch_first:
            x = x.transpose(0, 1)
        h0s, c0s = (hx if self.cell == "lstm" else (hx, None)) if hx is not None else (None, None)
        h_last, c_last = [], []
        for l in range(self.layers):
            outs = []
            for d in range(self.dirs):
                k = l * self.dirs + d
                h0 = self.zero_state if h0s is None else h0s[k]
                c0 = self.zero_state if c0s is None else c0s[k]
                args = (x, self._p("weight_ih", l, d), self._p("weight_hh", l, d), self._p("bias_ih", l, d),
                        self._p("bias_hh", l, d), h0, c0, self.cell, bool(d))
                y = torch.ops.edgequant.rnn(*args, "h")
                outs.append(y)
                h_last.append(y[:, 0] if d else y[:, -1])  # a reverse direction ends at step 0
                if self.cell == "lstm":
                    cy = torch.ops.edgequant.rnn(*args, "c")  # computed only if c_n is used (capture drops dead ops)
                    c_last.append(cy[:, 0] if d else cy[:, -1])
            x = torch.cat(outs, dim=2) if self.dirs == 2 else outs[0]
        out = x if self.batch_first else x.transpose(0, 1)
        h_n = torch.stack(h_last, 0)
        return (out, (h_n, torch.stack(c_last, 0))) if self.cell == "lstm" else (out, h_n)


def recurrent_ops(model: nn.Module) -> nn.Module:
    """``model`` itself when it holds no ``nn.LSTM``/``nn.GRU``, else a copy with each replaced."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN))]
    if not found:
        return model
    for name, m in found:
        where = f"module '{name or type(model).__name__}'"
        if isinstance(m, nn.RNN):
            raise UnsupportedOpError(f"{where} is nn.RNN; edgequant captures nn.LSTM and nn.GRU -- use one of those")
        if isinstance(m, nn.LSTM) and m.proj_size:
            raise UnsupportedOpError(f"{where} is nn.LSTM(proj_size={m.proj_size}); LSTM projections are not supported "
                                     "-- use proj_size=0 and a Linear after the LSTM")
        if not name:
            raise UnsupportedOpError(f"the model itself is {type(m).__name__}, which returns a tuple; wrap it in a module "
                                     "that returns one tensor (e.g. the last step's output through a Linear)")
    model = copy.deepcopy(model)
    for name, m in found:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, RecurrentOps(m, name))
    return model


# -- capture of the op ---------------------------------------------------------------------------
def _state(ctx: Ctx, fx, a, what: str, hidden: int) -> np.ndarray:
    """A constant initial state as (1, H): zero, or a learned tensor the same for every sample."""
    if not (isinstance(a, torch.fx.Node) and ctx.is_const(a)):
        raise UnsupportedOpError(
            f"node '{fx.name}' in module '{module_path(fx)}': the initial {what} is computed from the input; edgequant "
            "supports zero or constant (learned) initial states -- pass hx=None or a parameter")
    v = ctx.param(a).reshape(-1, hidden)
    if v.shape[0] != 1:
        if not np.all(v == v[:1]):
            raise UnsupportedOpError(f"node '{fx.name}' in module '{module_path(fx)}': the initial {what} differs between "
                                     "samples; edgequant needs one initial state for every sample (zero or learned)")
        v = v[:1]
    return v.astype(np.float32)


def _rnn(ctx: Ctx, fx, args):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, cell, reverse, output = args
    module = ctx.param_module(w_ih)
    if isinstance(x, torch.fx.Node) and x.name in _views(ctx)[1]:
        raise UnsupportedOpError(
            f"module '{module}' (nn.{cell.upper()}, batch_first=False) gets its (T, N, F) input straight from the model "
            "input, so the model's dim 0 is time; edgequant needs the batch in dim 0 -- give the model (N, T, F) and "
            "transpose inside it (x.transpose(0, 1)), or use batch_first=True")
    for p in (w_ih, w_hh, b_ih, b_hh):
        if not ctx.is_param(p):
            raise UnsupportedOpError(f"node '{fx.name}': recurrent weights computed at run time are not supported")
    hid = int(fx_shape(w_hh)[1]) if fx_shape(w_hh) else ctx.param(w_hh).shape[1]
    params = {"w_ih": ctx.param(w_ih), "w_hh": ctx.param(w_hh), "b_ih": ctx.param(b_ih), "b_hh": ctx.param(b_hh),
              "h0": _state(ctx, fx, h0, "hidden state h0", hid)}
    if cell == "lstm":
        params["c0"] = _state(ctx, fx, c0, "cell state c0", hid)
    attrs = {"cell": str(cell), "reverse": bool(reverse), "output": str(output), "hidden": hid}
    return Node(fx.name, "rnn", [ctx.ref(x, fx)], attrs, params, module=module)


HANDLERS[torch.ops.edgequant.rnn.default] = _rnn


# -- virtual layouts: stacks of states, time-major views ---------------------------------------------
_SHAPE_CONSTS = {aten.zeros.default: 0.0, aten.ones.default: 1.0, aten.zeros_like.default: 0.0,
                 aten.ones_like.default: 1.0, aten.new_zeros.default: 0.0, aten.new_ones.default: 1.0}
_TRANSPOSES = (aten.transpose.int, aten.permute.default, aten.swapaxes.default, aten.swapdims.default)


def _views(ctx: Ctx) -> tuple[dict, dict]:
    """(stacks: fx name -> [IR names of the (N, ...) items], time_major: fx name -> IR name of the
    batch-first tensor it is the dim-0/1 transpose of)."""
    if not hasattr(ctx, "rnn_stacks"):
        ctx.rnn_stacks, ctx.rnn_time_major = {}, {}
    return ctx.rnn_stacks, ctx.rnn_time_major


def _swaps01(fx) -> bool:
    nd = len(fx_shape(fx.args[0]))
    if fx.target == aten.permute.default:
        perm = [int(p) % nd for p in fx.args[1]]
        return perm[:2] == [1, 0] and perm[2:] == list(range(2, nd))
    d0, d1 = sorted((int(fx.args[1]) % nd, int(fx.args[2]) % nd))
    return (d0, d1) == (0, 1)


_IDENTITY_VIEWS = (aten.detach.default, aten.clone.default, aten.contiguous.default, aten.alias.default)
_READERS = {aten.select.int, aten.slice.Tensor, aten.squeeze.dim, aten.squeeze.dims, aten.unbind.int, operator.getitem,
            *_TRANSPOSES, *_IDENTITY_VIEWS}


def _read_virtually(fx) -> bool:
    """Every user of ``fx`` is an op that reads a virtual layout (indexing, transposing back, the rnn op).
    Why: a batch-moving transpose or ``unsqueeze(0)`` used any other way keeps capture's own error."""
    return bool(fx.users) and all(u.target in _READERS or u.target is torch.ops.edgequant.rnn.default for u in fx.users)


def _refuse(fx, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"node '{fx.name}' in module '{module_path(fx)}' ({fx.target}) uses {what}, whose batch is not in dim 0; "
        "edgequant supports indexing it along dim 0 (h_n[-1], h_n[-2:], out[-1] for batch_first=False), unbind, "
        "squeeze(0), and transpose(0, 1) back to batch-first -- rewrite the model to use those")


def _item_index(k, n: int, fx) -> int:
    k = int(k)
    if not -n <= k < n:
        raise UnsupportedOpError(f"node '{fx.name}': index {k} out of range for {n} items")
    return k % n


def intercept(ctx: Ctx, fx) -> bool:
    """Handle ``fx`` if it makes or reads a virtual layout, or is a shape-only constant; True if done."""
    stacks, tm = _views(ctx)
    t = fx.target
    if t is torch.ops.edgequant.rnn.default:
        return False
    if t in _SHAPE_CONSTS:  # torch.zeros(L, N, H) as an initial state: a constant (capture folds what uses it)
        val = fx.meta.get("val")  # keep the traced dtype: HF builds int64 token_type_ids with torch.zeros
        dtype = val.dtype if isinstance(val, torch.Tensor) else torch.float32
        ctx.consts[fx.name] = torch.full(fx_shape(fx), _SHAPE_CONSTS[t], dtype=dtype)
        return True
    args = [a for a in fx.args if isinstance(a, torch.fx.Node)]
    if t is aten.stack.default and int(fx.args[1] if len(fx.args) > 1 else fx.kwargs.get("dim", 0)) == 0:
        items = fx.args[0]
        if all(isinstance(a, torch.fx.Node) and not ctx.is_const(a) and a.name not in stacks and a.name not in tm
               for a in items):
            stacks[fx.name] = [ctx.ref(a, fx) for a in items]
            return True
        return False
    if (t is aten.unsqueeze.default and int(fx.args[1]) == 0 and args and not ctx.is_const(args[0])
            and args[0].name not in stacks and args[0].name not in tm and _read_virtually(fx)):  # h.unsqueeze(0): a stack of one (an initial state)
        stacks[fx.name] = [ctx.ref(args[0], fx)]
        return True
    if t in _TRANSPOSES and args and _swaps01(fx) and not ctx.is_const(args[0]):
        src = args[0].name
        if src in tm:  # back to batch-first
            ctx.alias[fx.name] = tm[src]
        elif src in stacks:  # (L*D, N, H) -> (N, L*D, H): the items side by side
            names = []
            for k, item in enumerate(stacks[src]):
                shape = _item_shape(ctx, item)
                names.append(f"{fx.name}.item{k}")
                ctx.nodes.append(Node(names[-1], "reshape", [item], {"shape": (1,) + shape[1:]}, {},
                                      (shape[0], 1) + shape[1:], module_path(fx)))
            if len(names) == 1:
                ctx.alias[fx.name] = names[0]
            else:
                ctx.nodes.append(Node(fx.name, "cat", names, {"axis": 1}, {}, fx_shape(fx), module_path(fx)))
        elif _read_virtually(fx):  # a batch-first tensor seen time-major
            tm[fx.name] = ctx.ref(args[0], fx)
        else:
            return False  # capture's own error: the permutation moves the batch dim
        return True
    virtual = [a for a in args if a.name in stacks or a.name in tm]
    if not virtual:
        return False
    src = virtual[0]
    if t is operator.getitem and src.name in ctx.splits:
        return False
    if src.name in stacks:
        items = stacks[src.name]
        if t is aten.select.int and int(fx.args[1]) == 0:
            ctx.alias[fx.name] = items[_item_index(fx.args[2], len(items), fx)]
        elif t is aten.slice.Tensor and int(fx.args[1] if len(fx.args) > 1 else 0) == 0:
            start = fx.args[2] if len(fx.args) > 2 else None
            stop = fx.args[3] if len(fx.args) > 3 else None
            step = int(fx.args[4]) if len(fx.args) > 4 else 1
            stacks[fx.name] = items[slice(start, None if stop is None or stop > len(items) else stop, step)]
        elif t in (aten.squeeze.dim, aten.squeeze.dims) and len(items) == 1 and \
                [int(d) for d in (fx.args[1] if isinstance(fx.args[1], (list, tuple)) else [fx.args[1]])] == [0]:
            ctx.alias[fx.name] = items[0]
        elif t is aten.unbind.int and int(fx.args[1] if len(fx.args) > 1 else 0) == 0:
            stacks[fx.name] = list(items)  # getitem k below picks item k
        elif t is operator.getitem:
            ctx.alias[fx.name] = items[_item_index(fx.args[1], len(items), fx)]
        elif t in _IDENTITY_VIEWS:
            stacks[fx.name] = items
        else:
            raise _refuse(fx, "a stack of per-sample tensors along dim 0 (h_n/c_n (layers*directions, N, H), or x.unsqueeze(0))")
        return True
    real = tm[src.name]
    shape = _item_shape(ctx, real)
    module = module_path(fx)
    if t is aten.select.int and int(fx.args[1]) == 0:  # y[t] of (T, N, H): step t of (N, T, H)
        k = _item_index(fx.args[2], shape[1], fx)
        sl = (shape[0], 1) + shape[2:]
        ctx.nodes.append(slice_node(f"{fx.name}.slice", real, 1, k, k + 1, 1, sl, module))
        ctx.nodes.append(Node(fx.name, "reshape", [f"{fx.name}.slice"], {"shape": shape[2:]}, {}, (shape[0],) + shape[2:],
                              module))
    elif t is aten.slice.Tensor and int(fx.args[1] if len(fx.args) > 1 else 0) == 0:  # y[a:b]: steps a..b
        step = int(fx.args[4]) if len(fx.args) > 4 else 1
        start, stop = slice_bounds(shape[1], fx.args[2] if len(fx.args) > 2 else None,
                              fx.args[3] if len(fx.args) > 3 else None, step)
        sl = (shape[0], len(range(start, stop, step))) + shape[2:]
        ctx.nodes.append(slice_node(f"{fx.name}.bf", real, 1, start, stop, step, sl, module))
        tm[fx.name] = f"{fx.name}.bf"
    elif t in _IDENTITY_VIEWS:
        tm[fx.name] = real
    else:
        raise _refuse(fx, "a sequence-first (T, N, ...) tensor (batch_first=False)")
    return True


def _item_shape(ctx: Ctx, name: str) -> tuple[int, ...]:
    for n in reversed(ctx.nodes):
        if n.name == name:
            return tuple(n.shape)
    raise KeyError(name)
