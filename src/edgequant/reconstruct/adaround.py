"""AdaRound: learn whether each weight rounds down or up (Nagel et al., arXiv 2004.10568).

Each weight is ``s * clip(floor(w/s) + h(V), lo, hi)`` with the rectified sigmoid
``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1``. ``V``
starts where ``h(V)`` equals the fractional part of ``w/s`` (so training starts at the float
weight) and is trained to minimise a reconstruction error plus ``lambda * f_reg`` with
``f_reg = sum(1 - |2 h(V) - 1|^beta)``, which pushes every ``h(V)`` to 0 or 1. ``beta`` is annealed
linearly from 20 to 2 after a warm-up (20% of the iterations) during which only the reconstruction
error counts (BRECQ's reference schedule). The result is ``floor(w/s) + [V >= 0]``: ordinary
integers on the unchanged scale, so the integer program needs nothing new.

A 1-bit channel (per-channel bit allocation gives some) has the grid {-1, +1}, where 0 does not
exist: its weight is ``s * (-1 + 2 h(V))``, so the learned choice is the sign, never 0.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

ZETA = 1.1
GAMMA = -0.1
LAMBDA = 0.01
BETA_START = 20.0
BETA_END = 2.0
WARMUP = 0.2


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def init_v(frac: torch.Tensor) -> torch.Tensor:
    """The ``V`` whose ``h(V)`` is ``frac`` (the inverse of the rectified sigmoid inside (0, 1))."""
    p = torch.clamp((frac - GAMMA) / (ZETA - GAMMA), 1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


class BetaSchedule:
    """Regulariser weight and temperature per iteration: (0, -) in the warm-up, then beta 20 -> 2."""

    def __init__(self, iterations: int, warmup: float = WARMUP, start: float = BETA_START, end: float = BETA_END) -> None:
        self.iterations, self.start, self.end = iterations, start, end
        self.warm = int(math.ceil(warmup * iterations))

    def __call__(self, it: int) -> tuple[bool, float]:
        """(regulariser on?, beta) at iteration ``it`` (0-based)."""
        if it < self.warm:
            return False, self.start
        t = (it - self.warm) / max(self.iterations - self.warm, 1)
        return True, self.end + (self.start - self.end) * max(0.0, 1.0 - t)


class AdaRoundWeight(nn.Module):
    """Learned rounding of one weight tensor on a fixed per-output-channel grid.

    ``scale`` (O,) and the per-channel integer bounds ``lo``/``hi`` (O,) come from the recipe's weight
    method, so the learned integers never leave the range that method chose (its bit width, or its
    per-channel allocation). ``binary`` (O,) bool marks 1-bit channels: they choose between -1 and
    +1 (lower point -1, spacing 2) instead of between two neighbours.
    """

    def __init__(self, weight: np.ndarray, scale: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 binary: np.ndarray | None = None) -> None:
        super().__init__()
        w = torch.as_tensor(np.asarray(weight, np.float64))
        shape = (-1,) + (1,) * (w.ndim - 1)
        s = torch.as_tensor(np.asarray(scale, np.float64)).reshape(shape)
        v = w / s
        b = torch.zeros(w.shape[0], dtype=torch.bool) if binary is None else torch.as_tensor(np.asarray(binary, bool))
        b = b.reshape(shape)
        floor = torch.where(b, -torch.ones_like(v), torch.floor(v))
        step = torch.where(b, 2.0, 1.0).to(torch.float64)
        self.register_buffer("scale", s.float())
        self.register_buffer("floor", floor.float())
        self.register_buffer("step", step.float())
        self.register_buffer("lo", torch.where(b, -1.0, torch.as_tensor(np.asarray(lo, np.float64)).reshape(shape)).float())
        self.register_buffer("hi", torch.where(b, 1.0, torch.as_tensor(np.asarray(hi, np.float64)).reshape(shape)).float())
        self.v = nn.Parameter(init_v(((v - floor) / step).clamp(0.0, 1.0).float()))

    def forward(self, hard: bool = False) -> torch.Tensor:
        """The (soft or hard) quantized float weight ``s * clip(floor + step * h(V), lo, hi)``."""
        up = (self.v >= 0).float() if hard else rectified_sigmoid(self.v)
        return self.scale * torch.clamp(self.floor + self.step * up, self.lo, self.hi)

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * rectified_sigmoid(self.v) - 1).abs().pow(beta)).sum()

    def integers(self) -> np.ndarray:
        """The learned integer weights (int8 container), same shape as the float weight."""
        with torch.no_grad():
            q = torch.clamp(self.floor + self.step * (self.v >= 0).float(), self.lo, self.hi)
        return q.numpy().astype(np.int8)
