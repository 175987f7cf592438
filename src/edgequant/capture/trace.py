"""Capture an ``nn.Module`` into a QGraph with ``torch.export`` (survives more real models than
``fx.symbolic_trace``: control flow on shapes, functional calls, ``x.size(0)``).

Translation is a table from ATen op to a small function; an op outside it raises
``UnsupportedOpError`` naming the node, the op and what to do. No silent float fallback.
"""
from __future__ import annotations

import operator
import warnings

import torch

from ..errors import CaptureError, UnsupportedOpError
from ..ir import Graph, Node
from . import hf, rnn, shape
from .context import HANDLERS, Ctx, fx_shape, IDENTITY, module_path
from .mha import batch_first_attention


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
    see ``capture.hf``) into a validated QGraph."""
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example, dict):
        example = hf.example_feeds(example)
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
        ep = _export(rnn.recurrent_ops(batch_first_attention(model)), example)
    finally:
        model.train(was_training)
    ctx = Ctx(ep, hf.batch_of(example))
    inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name not in ctx.param_of]
    if isinstance(example, dict):
        inputs = hf.prologue(ctx, ep, example)  # integer/mask inputs, the mask's derived values
    elif len(inputs) != 1:
        raise CaptureError(f"the model takes {len(inputs)} tensor inputs; edgequant supports exactly one")
    out_name = None
    live = _live(ep.graph)
    for fx in ep.graph.nodes:
        if fx.op == "placeholder":
            if fx.name not in ctx.param_of:
                ctx.nodes.append(Node(ctx.alias.get(fx.name, fx.name), "input", [], hf.input_attrs(ctx, fx), {},
                                      fx_shape(fx)))
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
        if (rnn.intercept(ctx, fx) or hf.intercept(ctx, fx)  # virtual h_n/time-major views; masks
                or shape.intercept(ctx, fx)):  # constants, chunk/split
            continue
        if target in IDENTITY or target is operator.getitem:
            if target is operator.getitem and fx.args[1] != 0:
                raise UnsupportedOpError(f"node '{fx.name}': uses output {fx.args[1]} of {fx.args[0].target}; only the first output is supported")
            src = fx.args[0]
            ctx.alias[fx.name] = ctx.ref(src, fx) if isinstance(src, torch.fx.Node) else src
            continue
        if target not in HANDLERS:
            module = module_path(fx)
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
        node.shape = fx_shape(fx)
        if not node.module:
            node.module = module_path(fx)
        ctx.nodes.append(node)
    if out_name is None:
        raise CaptureError("the traced graph has no output")
    if out_name in ctx.splits or out_name not in {n.name for n in ctx.nodes}:
        raise CaptureError(f"the model's output '{out_name}' is not computed from the input (a constant, or the tuple of a "
                           "split); return one tensor that depends on the input")
    names = [ctx.alias.get(n.name, n.name) for n in inputs]
    graph = Graph(ctx.nodes, names[0], out_name, names[1:])
    return hf.finish(graph).validate()
