"""Capture of models as Hugging Face loads them: keyword (dict) inputs, integer token inputs through
embedding tables, padding masks, and sums/means over any dim (masked mean pooling included).

``capture`` calls ``prologue`` for a dict example, ``intercept`` for every call (before
``capture.shape``), and ``finish`` on the graph.

The padding mask. A BERT-style model turns the (N, L) 0/1 ``attention_mask`` input into an
attention bias with dozens of ops (``arange``, ``index``, boolean ``and``, ``expand``,
``finfo.min``) that are not activation arithmetic. They are not translated one by one: every tensor
computed from a mask input and constants alone (the mask's *cone*) is evaluated here with torch on
test masks and recognised as

* ``select``: ``where(m != 0, keep, drop)`` broadcast from a view of ``m`` (an additive or boolean
  attention mask; the pooling weights ``mask.unsqueeze(-1).expand(...).float()``), or
* ``count``: the number of kept positions per sample (``mask.sum(1)``, the mean-pooling divisor).

Its consumers become IR ops that read the mask input itself: a masked ``softmax`` (keys with an
additive bias <= ``EXCLUDE`` or a False boolean mask get probability exactly 0, as exp underflows
to 0 in float32 for HF's ``finfo.min``), ``maskmul`` and a masked ``reduce`` mean. Anything else
the mask feeds is refused by name. Why: the integer program then never holds a -3.4e38 value, and
the semantics (which keys count) are exact, not an 8-bit approximation of a huge bias.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import CaptureError, UnsupportedOpError
from ..feeds import INT_DTYPE
from ..ir import Graph, Node
from .context import IDENTITY, Ctx, aten, fx_shape, module_path
from .shape import sdpa

EXCLUDE = -1e4  # an additive attention bias at or below this removes the key (HF uses finfo.min)
_INT_TORCH = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)


@dataclass
class MaskValue:
    """A tensor computed from mask input ``mask`` alone (see the module doc)."""

    kind: str  # "select" | "count" | "unknown"
    mask: str = ""  # the IR input node name
    view: tuple[int, ...] = ()  # the mask reshaped (batch dim left out) to broadcast against the value
    keep: float = 0.0
    drop: float = 0.0
    is_bool: bool = False


@dataclass
class _State:
    roles: dict[str, str] = field(default_factory=dict)  # fx placeholder -> "index" | "mask"
    cone: set[str] = field(default_factory=set)  # fx nodes computed from masks (and constants) only
    skip: set[str] = field(default_factory=set)  # cone and the constant nodes only the cone reads
    values: dict[str, MaskValue] = field(default_factory=dict)  # cone nodes read outside the cone


# -- examples and inputs ---------------------------------------------------------------------------
def example_feeds(example: dict) -> dict[str, torch.Tensor]:
    """The dict example as tensors: floats float32, integers (and bool masks) int64, batch >= 2."""
    if not example:
        raise CaptureError("the example batch is an empty dict; pass the model's keyword inputs")
    out, n = {}, None
    for k, v in example.items():
        if not isinstance(k, str):
            raise CaptureError(f"dict batch keys must be the model's keyword argument names (str), got {k!r}")
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
        t = t.detach().cpu()
        if t.dtype.is_floating_point:
            t = t.float()
        elif t.dtype in _INT_TORCH:
            t = t.long()
        else:
            raise CaptureError(f"example input {k!r} has dtype {t.dtype}; use float or integer tensors")
        if t.ndim < 2:
            raise CaptureError(f"example input {k!r} has shape {tuple(t.shape)}; every input needs a batch dim and "
                               "at least one more (token ids and masks are (N, L))")
        if n is not None and t.shape[0] != n:
            raise CaptureError(f"example input {k!r} has batch {t.shape[0]}, the first input {n}")
        n = t.shape[0]
        out[k] = t
    if n < 2:  # export specializes size-1 dims; batch 2 keeps reshapes batch-generic
        out = {k: torch.cat([v, v], 0) for k, v in out.items()}
    return out


def batch_of(example) -> int:
    return int(next(iter(example.values())).shape[0]) if isinstance(example, dict) else int(example.shape[0])


def input_attrs(ctx: Ctx, fx) -> dict:
    st: _State | None = getattr(ctx, "hf", None)
    if st is None or fx.name not in st.roles:
        return {}
    return {"dtype": INT_DTYPE, "role": st.roles[fx.name]}


def _users_through_identity(fx) -> list:
    out = []
    for u in fx.users:
        if u.target in IDENTITY and u.users:
            out.extend(_users_through_identity(u))
        elif u.target is not aten._assert_tensor_metadata.default:
            out.append(u)
    return out


def prologue(ctx: Ctx, ep, example: dict) -> list:
    """Name the inputs after the dict keys, give integer inputs their role, find and classify the
    mask cone. Returns the input placeholders in the dict's order."""
    user = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name not in ctx.param_of]
    keys = list(example)
    if len(user) != len(keys):
        raise CaptureError(f"the exported model has {len(user)} inputs for the {len(keys)} keys {keys}")
    st = _State()
    ctx.hf = st
    for ph, key in zip(user, keys):
        if ph.name != key:
            ctx.alias[ph.name] = key
        if example[key].dtype.is_floating_point:
            continue
        uses = _users_through_identity(ph)
        st.roles[ph.name] = "index" if uses and all(u.target is aten.embedding.default and u.args[0] is not ph
                                                    and _indices_of(u) is ph for u in uses) else "mask"
        if st.roles[ph.name] == "mask" and example[key].ndim != 2:
            raise CaptureError(f"integer input {key!r} of shape {tuple(example[key].shape)} is not used as token ids; "
                               "edgequant takes integer masks as (N, L) padding masks (1 = keep, 0 = padding)")
    masks = {ph.name for ph in user if st.roles.get(ph.name) == "mask"}
    if masks:
        _find_cone(ctx, ep, st, masks)
        for fx in ep.graph.nodes:
            idx = _indices_of(fx) if fx.target is aten.embedding.default else None
            if isinstance(idx, torch.fx.Node) and (idx.name in st.cone or idx.name in masks):
                raise UnsupportedOpError(
                    f"node '{fx.name}' in module '{module_path(fx)}' looks up an embedding with indices computed from the "
                    f"token input {', '.join(repr(ctx.alias.get(m, m)) for m in sorted(_sources(idx, masks)))}; edgequant uses integer "
                    "token inputs only to index embedding tables directly (compute position ids or masks outside the "
                    "model and pass them as inputs)")
        _classify(ctx, ep, st, {ph.name: example[ctx.alias.get(ph.name, ph.name)] for ph in user if ph.name in masks})
    return user


def _sources(fx, placeholders: set[str]) -> set[str]:
    """The placeholders among ``placeholders`` that ``fx`` is computed from."""
    seen, todo, out = set(), [fx], set()
    while todo:
        n = todo.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.name in placeholders:
            out.add(n.name)
        todo.extend(n.all_input_nodes)
    return out


def _indices_of(emb) -> object:
    a = emb.args[1]
    while isinstance(a, torch.fx.Node) and a.target in IDENTITY:
        a = a.args[0]
    return a


def _find_cone(ctx: Ctx, ep, st: _State, masks: set[str]) -> None:
    constlike = set(ctx.param_of)
    for fx in ep.graph.nodes:
        if fx.op != "call_function":
            continue
        ins = {i.name for i in fx.all_input_nodes}
        if ins <= constlike:
            constlike.add(fx.name)
        elif ins <= constlike | masks | st.cone:
            st.cone.add(fx.name)
    st.skip = set(st.cone)
    for fx in reversed(list(ep.graph.nodes)):  # constants that only the cone reads (arange, ...)
        live_users = [u for u in fx.users if u.users or u.op == "output"]  # not _assert_tensor_metadata
        if fx.op == "call_function" and fx.name in constlike and live_users and all(u.name in st.skip for u in live_users):
            st.skip.add(fx.name)


def _evaluate(ctx: Ctx, ep, st: _State, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    env = dict(feeds)

    def val(a):  # lazily: a value, its inputs first
        if a.name not in env:
            if a.op == "call_function":
                env[a.name] = a.target(*torch.fx.node.map_arg(a.args, val), **torch.fx.node.map_arg(a.kwargs, val))
            else:
                env[a.name] = ctx.const_tensor(a)
        return env[a.name]

    with torch.no_grad():
        for fx in ep.graph.nodes:
            if fx.op == "call_function" and fx.name in st.cone:
                val(fx)
    return env


def _test_masks(n: int, length: int) -> list[torch.Tensor]:
    """Padding masks that tell apart which positions a value follows: all kept, padded tails of two
    lengths, and a fixed random pattern (position 0 always kept, as a [CLS] token is)."""
    g = torch.Generator().manual_seed(0)
    out = [torch.ones(n, length, dtype=torch.long)]
    for cut in (max(1, length // 2), max(1, length - 1)):
        m = torch.ones(n, length, dtype=torch.long)
        m[-1, cut:] = 0
        out.append(m)
    r = torch.randint(0, 2, (n, length), generator=g)
    r[:, 0] = 1
    out.append(r)
    return out


def _classify(ctx: Ctx, ep, st: _State, examples: dict[str, torch.Tensor]) -> None:
    depends: dict[str, set[str]] = {m: {m} for m in examples}
    boundary = []
    for fx in ep.graph.nodes:
        if fx.name in st.cone:
            depends[fx.name] = set().union(*(depends.get(i.name, set()) for i in fx.all_input_nodes))
        if (fx.name in st.cone or fx.name in examples) and any(u.name not in st.skip for u in fx.users):
            boundary.append(fx)
    if not boundary:
        return
    names = list(examples)
    runs = []  # per test: (masks, env)
    for k in range(len(_test_masks(*examples[names[0]].shape))):
        feeds = {m: _test_masks(*examples[m].shape)[k] for m in names}
        runs.append((feeds, _evaluate(ctx, ep, st, feeds)))
    for fx in boundary:
        deps = depends.get(fx.name, set())
        if len(deps) != 1:
            st.values[fx.name] = MaskValue("unknown")
            continue
        m = next(iter(deps))
        st.values[fx.name] = _recognise([(f[m], env[fx.name]) for f, env in runs], ctx.alias.get(m, m))


def _recognise(pairs: list, mask_name: str) -> MaskValue:
    v0 = pairs[0][1]
    if not isinstance(v0, torch.Tensor) or v0.ndim < 2:
        return MaskValue("unknown", mask_name)
    shape, n, length = tuple(v0.shape), pairs[0][0].shape[0], pairs[0][0].shape[1]
    r = len(shape)
    if shape[0] != n:
        return MaskValue("unknown", mask_name)
    for k in range(r - 1, 0, -1):  # the axis the mask's positions run along (last first: keys)
        if shape[k] != length:
            continue
        view = [1] * (r - 1)
        view[k - 1] = length
        keep = drop = None
        ok = True
        for m, v in pairs:
            if tuple(v.shape) != shape:
                ok = False
                break
            sel = (m.reshape((n, *view)) != 0).expand(shape)
            vd = v.double()
            for part, cur in ((vd[sel], "keep"), (vd[~sel], "drop")):
                if part.numel() == 0:
                    continue
                first = float(part.reshape(-1)[0])
                if not bool((part == first).all()):
                    ok = False
                    break
                prev = keep if cur == "keep" else drop
                if prev is not None and prev != first:
                    ok = False
                    break
                if cur == "keep":
                    keep = first
                else:
                    drop = first
            if not ok:
                break
        if ok and keep is not None and drop is not None:
            return MaskValue("select", mask_name, tuple(view), keep, drop, v0.dtype == torch.bool)
    counts_ok = all(tuple(v.shape) == shape and torch.allclose(
        v.double(), m.sum(1).double().reshape((n,) + (1,) * (r - 1)).expand(shape)) for m, v in pairs)
    if counts_ok:
        return MaskValue("count", mask_name, (1,) * (r - 1))
    return MaskValue("unknown", mask_name)


# -- the per-call hook -----------------------------------------------------------------------------
def intercept(ctx: Ctx, fx) -> bool:
    """Handle ``fx`` here; True if done (skipped mask-cone ops, mask consumers, embeddings, reductions)."""
    st: _State | None = getattr(ctx, "hf", None)
    if st is not None:
        if fx.name in st.skip:
            return True
        for a in fx.all_input_nodes:
            if st.roles.get(a.name) == "index" and fx.target is not aten.embedding.default and fx.target not in IDENTITY:
                raise UnsupportedOpError(
                    f"node '{fx.name}' in module '{module_path(fx)}' ({fx.target}) computes on the token input "
                    f"{ctx.alias.get(a.name, a.name)!r}; edgequant uses integer token inputs only to index embedding "
                    "tables (compute position ids or masks outside the model and pass them as inputs)")
        used = [a for a in fx.all_input_nodes if a.name in st.values]
        if used:
            node = _mask_consumer(ctx, st, fx, used)
            node.shape = node.shape or fx_shape(fx)
            node.module = node.module or module_path(fx)
            ctx.nodes.append(node)
            return True
        if fx.target is aten.embedding.default:
            return _embedding(ctx, st, fx)
    if fx.target in (aten.sum.dim_IntList, aten.mean.dim) and not (isinstance(fx.args[0], torch.fx.Node)
                                                                    and ctx.is_const(fx.args[0])):  # constants fold
        node = _reduce(ctx, fx)
        if node is not None:
            node.shape, node.module = fx_shape(fx), module_path(fx)
            ctx.nodes.append(node)
            return True
    return False


def _embedding(ctx: Ctx, st: _State, fx) -> bool:
    w, idx = fx.args[0], _indices_of(fx)
    if ctx.is_param(w) and isinstance(idx, torch.fx.Node) and st.roles.get(idx.name) == "index":
        ctx.nodes.append(Node(fx.name, "embedding", [ctx.ref(idx, fx)], {}, {"weight": ctx.param(w)}, fx_shape(fx),
                              ctx.param_module(w)))
        return True
    if isinstance(idx, torch.fx.Node) and ctx.is_param(idx):
        return False  # constant indices (position / token-type ids from buffers): folded by capture.shape
    raise UnsupportedOpError(f"node '{fx.name}' in module '{module_path(fx)}': embedding lookup with computed indices "
                             "or a computed table; edgequant gathers from a parameter table with an integer input")


def _where(fx, what: str) -> str:
    return f"node '{fx.name}' in module '{module_path(fx)}' ({fx.target}): {what}"


def _mask_consumer(ctx: Ctx, st: _State, fx, used: list) -> Node:
    """The IR node for a call that reads a mask-derived value (see the module doc)."""
    mv = st.values[used[0].name]
    args = list(fx.args)
    if fx.target is aten.scaled_dot_product_attention.default:
        return _masked_sdpa(ctx, st, fx, args)
    others = [a for a in fx.all_input_nodes if a.name not in st.values]
    if len(used) == 1 and len(others) == 1 and mv.kind == "select":
        x = others[0]
        if fx.target in (aten.add.Tensor, aten.add_.Tensor) and fx.kwargs.get("alpha", 1) == 1 and _excludes(mv):
            return Node(fx.name, "masklogits", [ctx.ref(x, fx), mv.mask], {"mask_view": mv.view})
        if fx.target in (aten.mul.Tensor, aten.mul_.Tensor) and mv.keep == 1.0 and mv.drop == 0.0:
            return Node(fx.name, "maskmul", [ctx.ref(x, fx), mv.mask], {"mask_view": mv.view})
    if (fx.target is aten.div.Tensor and len(used) == 1 and mv.kind == "count" and isinstance(args[0], torch.fx.Node)
            and args[1] is used[0]):
        return _masked_mean(ctx, fx, args[0], mv)
    raise UnsupportedOpError(_where(fx, f"uses the padding mask {mv.mask!r} ({mv.kind}"
                                        + (f" keep={mv.keep:g} drop={mv.drop:g}" if mv.kind == "select" else "") + "); "
                                        "edgequant runs padding masks as an additive or boolean attention mask before "
                                        "softmax, as x * mask, and as masked mean pooling sum(x * mask) / sum(mask)"))


def _excludes(mv: MaskValue) -> bool:
    """A mask that keeps (bias 0 / True) or removes (bias <= EXCLUDE / False) each key."""
    if mv.is_bool:
        return mv.keep == 1.0 and mv.drop == 0.0
    return mv.keep == 0.0 and mv.drop <= EXCLUDE


class _FxView:
    """``fx`` with other kwargs, for reusing a handler without the attention mask."""

    def __init__(self, fx, kwargs: dict) -> None:
        self.name, self.target, self.meta, self.kwargs = fx.name, fx.target, fx.meta, kwargs


def _masked_sdpa(ctx: Ctx, st: _State, fx, args: list) -> Node:

    mask = args[3] if len(args) > 3 else fx.kwargs.get("attn_mask")
    mv = st.values.get(mask.name) if isinstance(mask, torch.fx.Node) else None
    if mv is None or any(a.name in st.values for a in args[:3] if isinstance(a, torch.fx.Node)):
        raise UnsupportedOpError(_where(fx, "the padding mask reaches the query, key or value; only attn_mask may hold it"))
    if mv.kind != "select" or not _excludes(mv) or mv.view[-1] != fx_shape(fx.args[1])[-2] or any(v != 1 for v in mv.view[:-1]):
        raise UnsupportedOpError(_where(fx, f"attention mask ({mv.kind}, keep={mv.keep:g}, drop={mv.drop:g}, view "
                                            f"{mv.view}) is not a key padding mask; edgequant supports masks that "
                                            "remove padded keys (boolean, or additive 0 / very negative)"))
    if len(args) > 3:
        args = args[:3] + [None] + args[4:]
    node = sdpa(ctx, _FxView(fx, {k: v for k, v in fx.kwargs.items() if k != "attn_mask"}), args)
    probs = ctx.nodes[-1]
    probs.inputs.append(mv.mask)
    probs.attrs["mask_view"] = (1,) * (len(probs.shape) - 2) + (mv.view[-1],)
    return node


def _masked_mean(ctx: Ctx, fx, num, count: MaskValue) -> Node:
    """``sum(x * mask, dims) / sum(mask, dims)``: the mean over kept positions of ``x``."""
    by = {n.name: n for n in ctx.nodes}
    s = by.get(ctx.alias.get(num.name, num.name))
    mm = by.get(s.inputs[0]) if s is not None and s.op == "reduce" else None
    if s is None or s.attrs["kind"] != "sum" or mm is None or mm.op != "maskmul" or mm.inputs[1] != count.mask:
        raise UnsupportedOpError(_where(fx, "divides by the number of kept positions something other than "
                                            "sum(x * mask); edgequant runs masked mean pooling sum(x * mask) / sum(mask)"))
    axis = 1 + list(mm.attrs["mask_view"]).index(max(mm.attrs["mask_view"]))
    if tuple(s.attrs["dims"]) != (axis,):
        raise UnsupportedOpError(_where(fx, f"masked mean over dims {s.attrs['dims']}, the mask runs along dim {axis}"))
    return Node(fx.name, "reduce", [mm.inputs[0], count.mask],
                {"kind": "mean", "dims": (axis,), "keepdim": s.attrs["keepdim"], "mask_view": mm.attrs["mask_view"]})


def _reduce(ctx: Ctx, fx) -> Node | None:
    """``x.sum(dims)`` / ``x.mean(dims)`` over non-batch dims (global spatial means stay ``mean``)."""
    x = fx.args[0]
    nd = len(fx_shape(x))
    dims = fx.args[1] if len(fx.args) > 1 else fx.kwargs.get("dim")
    keep = bool(fx.args[2]) if len(fx.args) > 2 else bool(fx.kwargs.get("keepdim", False))
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        raise UnsupportedOpError(_where(fx, "reduction over all dims (the batch too); reduce over non-batch dims"))
    dims = tuple(sorted(int(d) % nd for d in (dims if isinstance(dims, (list, tuple)) else [dims])))
    kind = "sum" if fx.target is aten.sum.dim_IntList else "mean"
    if kind == "mean" and ((nd == 4 and dims == (2, 3)) or (nd == 3 and dims == (2,))):
        return None  # the spatial global mean (capture._mean)
    if 0 in dims:
        raise UnsupportedOpError(_where(fx, f"{kind} over dims {dims} includes the batch dim 0"))
    if fx.kwargs.get("dtype") is not None:
        raise UnsupportedOpError(_where(fx, f"{kind} with dtype={fx.kwargs['dtype']}"))
    return Node(fx.name, "reduce", [ctx.ref(x, fx)], {"kind": kind, "dims": dims, "keepdim": keep})


# -- after capture ---------------------------------------------------------------------------------
def finish(graph: Graph) -> Graph:
    """Fuse ``masklogits -> softmax`` into a masked softmax and drop nodes nothing reads (the
    ``maskmul``/``sum`` that a masked mean replaced)."""
    by = graph.by_name()
    users: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    for n in graph.nodes:
        src = by.get(n.inputs[0]) if n.inputs else None
        if n.op == "softmax" and len(n.inputs) == 1 and src is not None and src.op == "masklogits" \
                and len(users.get(src.name, [])) == 1:
            n.inputs = list(src.inputs)
            rank = len(n.shape)
            view = tuple(src.attrs["mask_view"])
            if view[-1] != n.shape[-1] or any(v != 1 for v in view[:-1]) or len(view) != rank - 1:
                raise UnsupportedOpError(f"{n.describe()}: the additive mask does not run along the softmax axis")
            n.attrs["mask_view"] = view
    live = set(graph.inputs) | {graph.output}
    for n in reversed(graph.nodes):
        if n.name in live:
            live.update(n.inputs)
    graph.nodes = [n for n in graph.nodes if n.name in live]
    for n in graph.nodes:
        if n.op == "masklogits":
            raise UnsupportedOpError(f"{n.describe()}: an additive padding mask that does not feed a softmax directly; "
                                     "edgequant applies padding masks inside the attention softmax")
    return graph
