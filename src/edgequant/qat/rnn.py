"""QAT of one recurrent layer-direction (an ``rnn`` node): trainable weights, fake-quant where the
integer program quantizes.

The forward is the float twin of ``kernels.rnn`` with straight-through fake quantization: weights per
output channel (``WeightFakeQuant``, W_ih and W_hh separately), gate sums on Q3.12, gate outputs on
Q0.15, the LSTM cell on its power-of-two grid (``lower.rnn.cell_frac``) and h on the layer's output
quantizer at every step (h feeds the next step's matmul as int8). With ``rounding`` set, the value
is the integer program's own (the ``rnn`` kernel run on the current weights and grids, as
``integer_twin.run_program_op`` does for add/cat), the gradient the fake-quant one's.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn

from ..ir import Graph, Node
from ..kernels.rnn import Q015, Q312
from ..kernels.rnn_lut import INT16_MAX, INT16_MIN
from ..lower.rnn import cell_frac
from ..qmath import fake_quantize
from ..recipes import Recipe
from . import integer_twin as twin
from .config import QATConfig
from .fake_quant import ActFakeQuant, WeightFakeQuant


def _q16(v: torch.Tensor, scale: float) -> torch.Tensor:
    return fake_quantize(v, scale, 0.0, INT16_MIN, INT16_MAX)


class QATRnn(nn.Module):
    def __init__(self, node: Node, bits: int, per_channel: bool, cfg: QATConfig) -> None:
        super().__init__()
        self.node = node
        self.cell, self.hid, self.reverse = node.attrs["cell"], int(node.attrs["hidden"]), bool(node.attrs["reverse"])
        self.cf = cell_frac(node) if self.cell == "lstm" else 15
        for k in ("w_ih", "w_hh", "b_ih", "b_hh"):
            setattr(self, k, nn.Parameter(torch.as_tensor(node.params[k], dtype=torch.float32).clone()))
        self.register_buffer("h0", torch.as_tensor(node.params["h0"], dtype=torch.float32).reshape(1, -1))
        self.register_buffer("c0", torch.as_tensor(node.params.get("c0", node.params["h0"]), dtype=torch.float32).reshape(1, -1))
        self.wfq_ih = WeightFakeQuant(self.w_ih.detach(), bits, cfg.weight_range, per_channel, cfg.weight_init)
        self.wfq_hh = WeightFakeQuant(self.w_hh.detach(), bits, cfg.weight_range, per_channel, cfg.weight_init)

    def forward(self, x: torch.Tensor, out_q: ActFakeQuant, exact: "callable | None" = None) -> torch.Tensor:
        wi, wh = self.wfq_ih(self.w_ih), self.wfq_hh(self.w_hh)
        hid, n, t_len = self.hid, x.shape[0], x.shape[1]
        lstm = self.cell == "lstm"
        xp = _q16(torch.matmul(x, wi.t()) + self.b_ih + (self.b_hh if lstm else 0.0), Q312)
        h = out_q(self.h0.expand(n, hid))
        state = self.c0.expand(n, hid) if lstm else _q16(self.h0.expand(n, hid), Q015)
        cs = 2.0**-self.cf
        outs: list = [None] * t_len
        for t in (range(t_len - 1, -1, -1) if self.reverse else range(t_len)):
            hp = _q16(torch.matmul(h, wh.t()) + (0.0 if lstm else self.b_hh), Q312)
            px = xp[:, t]
            if lstm:
                pre = _q16(px + hp, Q312)
                i, f = _q16(torch.sigmoid(pre[:, :hid]), Q015), _q16(torch.sigmoid(pre[:, hid:2 * hid]), Q015)
                g, o = _q16(torch.tanh(pre[:, 2 * hid:3 * hid]), Q015), _q16(torch.sigmoid(pre[:, 3 * hid:]), Q015)
                state = _q16(_q16(f * state, cs) + _q16(i * g, cs), cs)
                h = out_q(o * _q16(torch.tanh(state), Q015))  # tanh(c) at the cell scale (TFLite arithmetic)
            else:
                r = _q16(torch.sigmoid(_q16(px[:, :hid] + hp[:, :hid], Q312)), Q015)
                z = _q16(torch.sigmoid(_q16(px[:, hid:2 * hid] + hp[:, hid:2 * hid], Q312)), Q015)
                nn_ = _q16(torch.tanh(_q16(px[:, 2 * hid:] + _q16(r * hp[:, 2 * hid:], Q312), Q312)), Q015)
                state = _q16(nn_ + _q16(z * (state - nn_), Q015), Q015)
                h = out_q(state)
            outs[t] = out_q(state) if self.node.attrs["output"] == "c" else h
        return torch.stack(outs, dim=1)

    @torch.no_grad()
    def trained_node(self) -> Node:
        """The node with the fake-quantized weights, trained biases and learned steps (for lowering)."""
        n = dataclasses.replace(self.node, params=dict(self.node.params), attrs=dict(self.node.attrs))
        for key, w, fq in (("w_ih", self.w_ih, self.wfq_ih), ("w_hh", self.w_hh, self.wfq_hh)):
            n.params[key] = fq(w).cpu().numpy().astype(np.float32)
            n.attrs[f"weight_scale_{key}"] = [float(v) for v in fq.scale_for(w).cpu().numpy().astype(np.float32)]
        n.params["b_ih"], n.params["b_hh"] = (b.detach().cpu().numpy().astype(np.float32) for b in (self.b_ih, self.b_hh))
        return n


def exact_output(graph: Graph, qat: QATRnn, recipe: Recipe, x: torch.Tensor, in_q: ActFakeQuant, out_q: ActFakeQuant,
                 rounding: str) -> torch.Tensor:
    """The integer program's output integers for the current weights and grids (int64)."""
    opts = tuple((k, v) for k, v in recipe.options if k != "weight_method") + (("weight_method", "qat"),)
    r = dataclasses.replace(recipe, options=opts)
    si, zi = in_q.grid()
    return twin.run_program_op(graph, qat.trained_node(), r, [(twin.to_int(x, si, zi), in_q.qparams())], out_q.qparams(),
                               rounding)
