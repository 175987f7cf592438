"""QGraph: edgequant's own small graph IR.

Captured once from torch; every pass is ``Graph -> Graph`` and nothing downstream touches torch.fx.
A node's name is also the name of the tensor it produces. Shapes carry the example batch in dim 0.

Ops (attrs in brackets):
  input                                   the model input
  conv      [stride, padding(t,b,l,r), dilation, groups, dims(1|2)]  params weight (O,C/g,kh,kw), bias
  linear                                  params weight (O, I), bias; input rank >= 2, acts on the last dim
  batchnorm [eps]                         params weight, bias, mean, var (folded away by passes)
  clamp     [lo, hi]                      ReLU (0, inf), ReLU6/Hardtanh (lo, hi)
  add                                     two tensors, same shape; a ``const`` operand broadcasts
  mul                                     two tensors, same rank, size-1 dims broadcast ((N,C,1,1) * (N,C,H,W))
  unary     [fn, fn's constants]          element-wise function of one tensor (``unary.FUNCTIONS``:
                                          sigmoid, hardswish, ..., affine x*mul+add); a lookup table
  cat       [axis]
  maxpool   [kernel, stride, padding(t,b,l,r), dilation, ceil_mode]
  avgpool   [kernel, stride, padding(t,b,l,r), ceil_mode, count_include_pad]
  mean      []                            global average over H, W, keepdim per ``keepdim``
  reshape   [shape]                       shape without the batch dim (batch is kept)
  pad       [pads ((before, after) per dim, batch dim (0,0)), value]
  matmul    [alpha]                       a (..., M, K) @ b (..., K, N), two activations, equal leading dims;
                                          ``alpha`` (default 1) a constant scale folded in by ``passes``
  softmax   [axis]                        over the last axis only
  layernorm [eps]                         params weight, bias (D,); normalises over the last dim only
  transpose [perm]                        full permutation with the batch dim fixed (perm[0] == 0)
  slice     [axis (!= 0), start, stop, step]  data movement: x[..., start:stop:step, ...] along ``axis``
  upsample  [mode (nearest|bilinear), size (H, W), align_corners]  2-D resize of (N, C, H, W); nearest by
                                          whole factors only
  const     params value (1, ...)         a constant tensor, broadcast over the batch (no inputs)
  rnn       [cell (lstm|gru), reverse, output (h|c), hidden]  params w_ih, w_hh, b_ih, b_hh, h0 (1,H), c0 (1,H,
                                          lstm); one layer-direction over (N, T, I) -> (N, T, H) (capture.rnn)
Keyword inputs (dict batches, ``capture.hf``): ``Graph.extra_inputs`` names inputs after the first;
an integer input node has ``attrs["dtype"] = "int64"`` and ``attrs["role"]`` "index" (token ids) or
"mask" (a (N, L) padding mask, nonzero = keep). ``mask_view`` is the mask's shape without the batch
dim, reshaped to broadcast against the other operand ((1, 1, L) for (N, H, Lq, L) scores).
  embedding params weight (V, D)          table gather: input an index input (N, ...) -> (N, ..., D)
  softmax   [axis, mask_view]             with a second input (a mask input): masked keys get probability 0
  masklogits [mask_view]                  x where keep, else -inf (an additive padding mask; fused into softmax)
  maskmul   [mask_view]                   x where keep, else 0 (x * mask)
  reduce    [kind (sum|mean), dims, keepdim, mask_view]  sum/mean over any non-batch dims; with a second
                                          input (a mask over one of ``dims``) the mean is over kept positions
After ``fuse_activations`` a conv/linear/add may carry ``act=(lo, hi)``: its output is clamped.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from .errors import CaptureError

OPS = {"input", "conv", "linear", "batchnorm", "clamp", "add", "mul", "unary", "cat", "maxpool", "avgpool", "mean", "reshape", "pad",
       "matmul", "softmax", "layernorm", "transpose"}
OPS |= {"slice", "upsample", "const"}  # data movement and constants (capture.shape)
OPS |= {"rnn"}  # one LSTM/GRU layer-direction (capture.rnn)
OPS |= {"embedding", "masklogits", "maskmul", "reduce"}  # keyword/integer inputs and masks (capture.hf)


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    module: str = ""  # dotted path of the nn.Module it came from, for messages and overrides

    def describe(self) -> str:
        where = f" (module '{self.module}')" if self.module else ""
        return f"node '{self.name}' [{self.op}]{where}"


@dataclass
class Graph:
    nodes: list[Node]
    input: str
    output: str
    extra_inputs: list[str] = field(default_factory=list)  # keyword inputs after the first (dict batches)

    @property
    def inputs(self) -> list[str]:
        return [self.input, *self.extra_inputs]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.node(self.input).shape

    def copy(self) -> "Graph":
        return copy.deepcopy(self)

    def validate(self) -> "Graph":
        """Check structure after every pass: known ops, unique names, topological order."""
        seen: set[str] = set()
        for n in self.nodes:
            if n.op not in OPS:
                raise CaptureError(f"{n.describe()}: unknown IR op {n.op!r}")
            if n.name in seen:
                raise CaptureError(f"duplicate node name {n.name!r}")
            for i in n.inputs:
                if i not in seen:
                    raise CaptureError(f"{n.describe()} uses {i!r} before it is defined")
            seen.add(n.name)
        if any(i not in seen for i in self.inputs) or self.output not in seen:
            raise CaptureError("graph input/output not among its nodes")
        return self

    def summary(self) -> str:
        lines = []
        for n in self.nodes:
            extra = {k: v for k, v in n.attrs.items()}
            ps = {k: tuple(v.shape) for k, v in n.params.items()}
            lines.append(f"{n.name:<28} {n.op:<9} {','.join(n.inputs):<28} {str(n.shape):<20} {extra} {ps}")
        return "\n".join(lines)
