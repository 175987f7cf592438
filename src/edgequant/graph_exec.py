"""Float execution of a QGraph in torch: the fp32 reference, calibration and per-layer studies.

``hook(node, tensor) -> tensor`` sees every node output (observers read it; fake-quant replaces
it), so one executor serves calibration, sensitivity and QAT-style simulation.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .feeds import is_int_input
from .ir import Graph, Node
from .rnn_float import rnn_layer
from .masking import FLOAT_OPS as _MASK_OPS
from .unary import apply as apply_unary

Hook = Callable[[Node, torch.Tensor], torch.Tensor]


def _act(y: torch.Tensor, node: Node) -> torch.Tensor:
    if "act" in node.attrs:
        lo, hi = node.attrs["act"]
        y = torch.clamp(y, min=lo if lo != float("-inf") else None, max=hi if hi != float("inf") else None)
    return y


def conv_float(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, attrs: dict) -> torch.Tensor:
    t, bo, l, r = attrs["padding"]
    squeeze = attrs.get("dims", 2) == 1 and x.ndim == 3
    if squeeze:
        x = x.unsqueeze(2)
    if (t, l) != (bo, r):
        x = F.pad(x, (l, r, t, bo))
        pad = (0, 0)
    else:
        pad = (t, l)
    y = F.conv2d(x, w, b, tuple(attrs["stride"]), pad, tuple(attrs["dilation"]), attrs["groups"])
    return y.squeeze(2) if squeeze else y


def pool_float(op: str, x: torch.Tensor, attrs: dict) -> torch.Tensor:
    t, bo, l, r = attrs["padding"]
    if op == "maxpool":
        if (t, l) != (bo, r):
            x = F.pad(x, (l, r, t, bo), value=float("-inf"))
            t = l = 0
        return F.max_pool2d(x, attrs["kernel"], attrs["stride"], (t, l), attrs["dilation"], attrs["ceil_mode"])
    return F.avg_pool2d(x, attrs["kernel"], attrs["stride"], (t, l), attrs["ceil_mode"], attrs["count_include_pad"])


def mean_float(x: torch.Tensor, keepdim: bool) -> torch.Tensor:
    dims = tuple(range(2, x.ndim))
    return x.mean(dim=dims, keepdim=keepdim)


def batch_broadcast(xs: list) -> list:
    """Inputs of batch 1 (constants) expanded to the batch of the others (``cat``); torch or NumPy."""
    n = max(int(x.shape[0]) for x in xs)
    out = []
    for x in xs:
        if int(x.shape[0]) == 1 and n != 1:
            shape = (n,) + tuple(x.shape[1:])
            x = np.broadcast_to(x, shape) if isinstance(x, np.ndarray) else x.expand(shape)
        out.append(x)
    return out


def upsample_float(x: torch.Tensor, a: dict) -> torch.Tensor:
    if a["mode"] == "nearest":
        return F.interpolate(x, size=tuple(a["size"]), mode="nearest")
    return F.interpolate(x, size=tuple(a["size"]), mode="bilinear", align_corners=bool(a["align_corners"]))


def _slice_float(node, args, params):
    a = node.attrs
    idx = [slice(None)] * args[0].ndim
    idx[a["axis"]] = slice(a["start"], a["stop"], a["step"])
    return args[0][tuple(idx)]


SHAPE_OPS = {
    "slice": _slice_float,
    "upsample": lambda node, args, params: upsample_float(args[0], node.attrs),
    "const": lambda node, args, params: params["value"],
    "rnn": lambda node, args, params: rnn_layer(node.attrs["cell"], args[0], params["w_ih"], params["w_hh"], params["b_ih"],
                                                params["b_hh"], params["h0"], params.get("c0", params["h0"]),
                                                node.attrs["reverse"], node.attrs["output"]),
}


SHAPE_OPS.update(_MASK_OPS)  # embedding, masked softmax, maskmul, reduce (masking)


def run_node(node: Node, args: list[torch.Tensor], params: dict[str, torch.Tensor]) -> torch.Tensor:
    op, a = node.op, node.attrs
    if op in SHAPE_OPS:
        return SHAPE_OPS[op](node, args, params)
    if op == "conv":
        return _act(conv_float(args[0], params["weight"], params.get("bias"), a), node)
    if op == "linear":  # in_scale: SmoothQuant's per-input-channel factors (lowbit/smooth.py)
        x = args[0] * params["in_scale"] if "in_scale" in params else args[0]
        return _act(F.linear(x, params["weight"], params.get("bias")), node)
    if op == "batchnorm":
        return F.batch_norm(args[0], params["mean"], params["var"], params["weight"], params["bias"], False, 0.0, a["eps"])
    if op == "clamp":
        lo, hi = a["lo"], a["hi"]
        return torch.clamp(args[0], min=None if lo == float("-inf") else lo, max=None if hi == float("inf") else hi)
    if op == "add":
        return _act(args[0] + args[1], node)
    if op == "mul":
        return args[0] * args[1]
    if op == "unary":
        return apply_unary(a["fn"], a, args[0])
    if op == "cat":
        return torch.cat(batch_broadcast(args), a["axis"])
    if op in ("maxpool", "avgpool"):
        return pool_float(op, args[0], a)
    if op == "mean":
        return mean_float(args[0], a["keepdim"])
    if op == "reshape":
        return args[0].reshape((args[0].shape[0],) + tuple(a["shape"]))
    if op == "pad":
        flat = [v for pr in reversed(a["pads"]) for v in pr]
        return F.pad(args[0], flat, value=a["value"])
    if op == "matmul":
        y = torch.matmul(args[0], args[1])
        return y * a["alpha"] if a.get("alpha", 1.0) != 1.0 else y
    if op == "softmax":
        return torch.softmax(args[0], dim=-1)
    if op == "layernorm":
        return F.layer_norm(args[0], (args[0].shape[-1],), params["weight"], params["bias"], a["eps"])
    if op == "transpose":
        return args[0].permute(*a["perm"])
    raise KeyError(op)


class GraphModule(torch.nn.Module):
    """A QGraph as a float torch module (parameters are buffers: the graph is for inference)."""

    def __init__(self, graph: Graph, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.graph = graph
        self.dtype = dtype
        self._params = {
            n.name: {k: torch.as_tensor(v, dtype=dtype) for k, v in n.params.items()} for n in graph.nodes
        }

    def set_param(self, node: str, key: str, value) -> None:
        """Replace one node's parameter for the following calls (GPTQ's sequential mode runs the
        layers it has rounded on their integers)."""
        self._params[node][key] = torch.as_tensor(value, dtype=self.dtype)

    def forward(self, x, hook: Hook | None = None) -> torch.Tensor:
        """``x``: the input tensor, or a dict of keyword inputs (integer inputs stay int64). Each
        node's output is dropped after its last use (an ImageNet-size net keeps a few maps alive,
        not all ~100 of them: calibration batches stay small in RAM)."""
        env: dict[str, torch.Tensor] = {}
        last = last_uses(self.graph)
        for i, n in enumerate(self.graph.nodes):
            if n.op == "input":
                v = torch.as_tensor(x[n.name] if isinstance(x, dict) else x)
                y = v.long() if is_int_input(n.attrs) else v.to(self.dtype)
            else:
                y = run_node(n, [env[a] for a in n.inputs], self._params[n.name])
                for a in set(n.inputs):
                    if last.get(a) == i and a != self.graph.output:
                        del env[a]
            if hook is not None and not (n.op == "input" and is_int_input(n.attrs)):  # ids/masks: never quantized
                y = hook(n, y)
            env[n.name] = y
        return env[self.graph.output]


def last_uses(graph: Graph) -> dict[str, int]:
    """Tensor name -> index of the last node (in ``graph.nodes`` order) that reads it."""
    return {a: i for i, n in enumerate(graph.nodes) for a in n.inputs}
