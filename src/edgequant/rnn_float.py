"""The float definition of one recurrent layer-direction (LSTM or GRU), PyTorch's equations.

One function serves the captured op's eager implementation, the float graph executor
(calibration, fp32 reference) and the fp32/fp16 kernels, so they cannot drift apart.
Gate order is PyTorch's: LSTM (i, f, g, o), GRU (r, z, n).
"""
from __future__ import annotations

from typing import Callable

import torch

CELLS = ("lstm", "gru")
GATES = {"lstm": 4, "gru": 3}


def rnn_layer(cell: str, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
              b_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, reverse: bool = False,
              output: str = "h", quant: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(N, T, I) -> (N, T, H): the hidden state (``output="h"``) or the LSTM cell state (``"c"``)
    after every step, in input order (a reverse direction runs from T-1 down to 0).
    ``h0``/``c0`` are (1, H) or (N, H). ``quant`` (the dynamic recipes' fake quantization) is
    applied to x and to h before each matmul."""
    q = quant or (lambda v: v)
    n, t_len, _ = x.shape
    hid = w_hh.shape[1]
    xp = torch.matmul(q(x), w_ih.t()) + b_ih  # (N, T, G*H)
    h = h0.expand(n, hid)
    c = c0.expand(n, hid)
    outs: list = [None] * t_len
    steps = range(t_len - 1, -1, -1) if reverse else range(t_len)
    for t in steps:
        hp = torch.matmul(q(h), w_hh.t()) + b_hh
        if cell == "lstm":
            i, f, g, o = (xp[:, t] + hp).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            xr, xz, xn = xp[:, t].chunk(3, dim=1)
            hr, hz, hn = hp.chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            nn_ = torch.tanh(xn + r * hn)
            h = nn_ + z * (h - nn_)  # (1 - z) * n + z * h
        outs[t] = c if output == "c" else h
    return torch.stack(outs, dim=1)
