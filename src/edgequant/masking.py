"""Float semantics of the ops that read integer inputs: ``embedding``, the masked ``softmax``,
``maskmul``, ``masklogits`` and ``reduce`` (masked or not).

One definition serves the float graph (calibration, the fp32 reference) and the fake-quant twin of
the integer kernels (``kernels.masked``), in torch; a mask is the (N, L) integer input, nonzero =
keep, reshaped by the node's ``mask_view`` to broadcast against the other operand.

Also the token bookkeeping of the passes that collect layer-input statistics over calibration data
(GPTQ's Hessians, SmoothQuant's channel maxima): which graph inputs are padding masks, and the kept
tokens of a linear's input.
"""
from __future__ import annotations

import torch

from .ir import Graph, Node


def keep(mask: torch.Tensor, view, like: torch.Tensor) -> torch.Tensor:
    """Boolean keep-mask of ``mask`` (N, L) in ``view`` broadcast to ``like``'s shape."""
    m = torch.as_tensor(mask)
    return (m.reshape((m.shape[0], *view)) != 0).expand(like.shape)


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.embedding(torch.as_tensor(ids).long(), weight)


def softmax(x: torch.Tensor, mask: torch.Tensor | None = None, view=None) -> torch.Tensor:
    """Softmax over the last axis; masked keys get probability exactly 0."""
    if mask is None:
        return torch.softmax(x, dim=-1)
    return torch.softmax(x.masked_fill(~keep(mask, view, x), float("-inf")), dim=-1)


def maskmul(x: torch.Tensor, mask: torch.Tensor, view) -> torch.Tensor:
    return x.masked_fill(~keep(mask, view, x), 0.0)


def reduce(x: torch.Tensor, attrs: dict, mask: torch.Tensor | None = None) -> torch.Tensor:
    """sum/mean over ``attrs["dims"]``; with a mask, the mean over kept positions (at least one)."""
    dims, keepdim = tuple(attrs["dims"]), bool(attrs["keepdim"])
    if mask is None:
        return x.sum(dim=dims, keepdim=keepdim) if attrs["kind"] == "sum" else x.mean(dim=dims, keepdim=keepdim)
    k = keep(mask, attrs["mask_view"], x).to(x.dtype)
    total = (x * k).sum(dim=dims, keepdim=keepdim)
    if attrs["kind"] == "sum":
        return total
    return total / k.sum(dim=dims, keepdim=keepdim).clamp(min=1.0)


def _opt_mask(args: list):
    return args[1] if len(args) > 1 else None


# graph_exec.SHAPE_OPS entries: (node, args, params) -> tensor
FLOAT_OPS = {
    "embedding": lambda node, args, params: embedding(args[0], params["weight"]),
    "softmax": lambda node, args, params: softmax(args[0], _opt_mask(args), node.attrs.get("mask_view")),
    "maskmul": lambda node, args, params: maskmul(args[0], args[1], node.attrs["mask_view"]),
    "masklogits": lambda node, args, params: args[0].masked_fill(~keep(args[1], node.attrs["mask_view"], args[0]),
                                                                 float("-inf")),
    "reduce": lambda node, args, params: reduce(args[0], node.attrs, _opt_mask(args)),
}


def padding_masks(graph: Graph) -> set[str]:
    """Graph inputs used as padding masks (the second input of a masked softmax, maskmul or reduce)."""
    return {n.inputs[1] for n in graph.nodes if n.op in ("softmax", "maskmul", "reduce") and len(n.inputs) > 1
            and graph.node(n.inputs[1]).op == "input"}


def batch_keep(x, masks: set[str]) -> torch.Tensor | None:
    """The (N, L) keep-mask of calibration batch ``x`` when the graph has exactly one padding mask."""
    return torch.as_tensor(x[next(iter(masks))]) != 0 if len(masks) == 1 and isinstance(x, dict) else None


def kept_rows(node: Node, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """A linear's input (N, ..., K) as (rows, K): every token a column of the GEMM; with a padding
    mask ``keep`` (N, L), only the kept tokens of an (N, L, K) input (padded positions never reach
    a kept token or the pooled output: their keys get probability 0). Other ops: ``x`` unchanged."""
    if node.op != "linear":
        return x
    if keep is not None and x.ndim == 3 and tuple(x.shape[:2]) == tuple(keep.shape):
        return x[keep]
    return x.reshape(-1, x.shape[-1])
