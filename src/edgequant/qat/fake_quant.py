"""Fake-quant modules for training: quantize-dequantize in float, straight-through backward.

Forward rounds onto exactly the integer grid the program will use; backward passes gradients
straight through the rounding (Jacob et al. 2018; whitepaper arXiv 1806.08342), zero where the
value was clamped. Ranges are either learned or tracked:

* ``"lsq"``  -- the step size is a parameter (Esser et al., LSQ, arXiv 1902.08153): its gradient is
  scaled by ``1/sqrt(N * Q_P)`` and, for weights, it starts at ``2 * mean|v| / sqrt(Q_P)`` (LSQ's
  init) or at the min/max step ``max|v| / Q_P`` (``init="minmax"``).
* ``"pact"`` -- activations: learned clip range (Choi et al., PACT, arXiv 1805.06085); the clip
  gets the gradient of the values it clips, the grid follows the clip.
* ``"ema"``  -- activations: exponential moving average of batch min/max (the whitepaper's
  default); weights: ``"minmax"``, the current per-channel max|w| (no learned state).
* ``"xnor"`` -- 1-bit weights (Rastegari et al., XNOR-Net, arXiv 1603.05279): ``alpha_c * sign(W)``
  with ``alpha_c = mean|W_c|`` and the clipped-identity STE (gradient 1 where |W| <= 1).
* ``"sign"`` -- 1-bit activations on the program's two levels ``s * (+-1 - z)``: ``{-s, +s}``
  (``z = 0``, XNOR-Net's ``s * sign(x)``) or ``{0, 2s}`` for a non-negative tensor (``z = -1``),
  high iff ``x`` reaches the midpoint ``-z * s`` (the ``binarize`` kernel's rule); clipped-identity
  STE (gradient where ``x`` lies between the levels); ``s`` learned like an LSQ step.

Every quantizer reports the scale/zero point it used (``qparams()``) so that ``convert`` lowers
the integer program on the very grid the module trained on.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ..errors import RecipeError
from ..qmath import QParams, qrange

ACT_METHODS = ("lsq", "pact", "ema")
WEIGHT_METHODS = ("lsq", "minmax")
WEIGHT_INITS = ("lsq", "minmax")
_EPS = 1e-8


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest even in forward, identity in backward."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Value of ``x``, gradient multiplied by ``g`` (LSQ's step-size gradient scale)."""
    return x * g + (x - x * g).detach()


def sign_ste(x: torch.Tensor, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``+1`` where ``x >= 0`` else ``-1`` (never 0); gradient 1 where ``|x| <= clip``, else 0."""
    s = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    inside = (x.abs() <= clip).to(x.dtype)
    return (x * inside - (x * inside).detach()) + s


def binary_ste(x: torch.Tensor, s: torch.Tensor, z: float) -> torch.Tensor:
    """``s * (b - z)``, ``b = +1`` iff ``x >= -z * s`` else ``-1``: value of a 1-bit tensor.

    Gradient in ``x``: 1 between the two levels ``s * (-1 - z)`` and ``s * (1 - z)`` (clipped
    identity), else 0; in ``s``: ``b - z`` (the level's multiple of the step).
    """
    sd = s.detach()
    b = torch.where(x >= -z * sd, torch.ones_like(x), -torch.ones_like(x))
    inside = ((x >= sd * (-1 - z)) & (x <= sd * (1 - z))).to(x.dtype)
    return (b - z) * s + (x * inside - (x * inside).detach())


def range_to_scale_zp(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of ``qmath.compute_qparams`` (per tensor): zero exactly representable, nudged zp."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    if symmetric:
        scale = torch.maximum(-lo, hi) / max(qmax, 1)
        zp = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.clamp(torch.round(qmin - lo / safe), qmin, qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float32)
    return scale, zp


def _fq(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """LSQ-form fake quantization: differentiable in ``x`` (STE, zero when clamped) and in ``s``."""
    q = torch.clamp(round_ste(x / s) + z, qmin, qmax)
    return (q - z) * s


class ActFakeQuant(nn.Module):
    """Per-tensor activation fake-quant, initialised from calibrated ``QParams``.

    ``forward`` also updates tracked statistics (EMA, in training mode); ``requant`` only rounds a
    tensor onto this quantizer's current grid (for ops that keep their input's qparams).
    """

    def __init__(self, qp: QParams, method: str = "lsq", symmetric: bool = False, momentum: float = 0.01) -> None:
        super().__init__()
        if qp.bits == 1:
            method = "sign"
        elif method not in ACT_METHODS:
            raise RecipeError(f"unknown activation range method {method!r}; use one of {ACT_METHODS}")
        self.method = method
        self.bits = int(qp.bits)
        self.narrow = bool(qp.narrow)
        self.symmetric = symmetric
        self.qmin, self.qmax = qrange(self.bits, True, self.narrow)
        self.momentum = momentum
        s0, z0 = float(qp.scale), float(qp.zero_point)
        lo0, hi0 = s0 * (self.qmin - z0), s0 * (self.qmax - z0)
        if method == "sign" and z0 not in (-1.0, 0.0, 1.0):
            raise RecipeError(f"1-bit activation qparams with zero point {z0:g}; a binary tensor needs -1, 0 or 1")
        self.register_buffer("zero_point", torch.tensor(z0))
        self.binary_zp = self.fixed_zp = z0  # fixed for lsq/sign: a Python float, so forward never reads a device
        if method in ("lsq", "sign"):
            self.scale = nn.Parameter(torch.tensor(s0, dtype=torch.float32))
        elif method == "pact":
            self.hi = nn.Parameter(torch.tensor(max(hi0, 0.0), dtype=torch.float32))
            if lo0 < 0:
                self.lo = nn.Parameter(torch.tensor(lo0, dtype=torch.float32))
            else:
                self.register_buffer("lo", torch.tensor(0.0))
        else:  # ema
            self.register_buffer("lo", torch.tensor(min(lo0, 0.0)))
            self.register_buffer("hi", torch.tensor(max(hi0, 0.0)))

    # -- the grid ------------------------------------------------------------------------------
    def scale_zp(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) as used in forward; detached for ``pact``/``ema``."""
        if self.method in ("lsq", "sign"):
            return self.scale.abs().clamp_min(_EPS), self.zero_point
        s, z = range_to_scale_zp(self.lo.detach(), self.hi.detach(), self.qmin, self.qmax, self.symmetric)
        return s, z

    def grid(self) -> tuple[float, int]:
        """(scale as the float32 value the program stores, integer zero point), plain Python."""
        s, z = self.scale_zp()
        return float(np.float32(float(s.detach()))), int(round(float(z.detach())))

    def qparams(self) -> QParams:
        s, z = self.grid()
        return QParams(np.asarray(s, np.float32).reshape(()), np.asarray(z, np.int32).reshape(()),
                       self.bits, True, self.narrow, None)

    def int_bounds(self, lo: float, hi: float) -> tuple[int, int]:
        """A clamp (lo, hi) in real units as integer bounds on this grid (``lower.act_int_bounds``)."""
        s, z = self.grid()

        def snap(v: float, default: int) -> int:
            return default if not math.isfinite(v) else int(min(max(z + round(v / s), self.qmin), self.qmax))
        return snap(lo, self.qmin), snap(hi, self.qmax)

    def real_bounds(self, lo: float, hi: float) -> tuple[float, float]:
        """The same clamp snapped onto the grid, in real units."""
        s, z = self.grid()
        a, b = self.int_bounds(lo, hi)
        return s * (a - z), s * (b - z)

    # -- forward -------------------------------------------------------------------------------
    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """Track statistics (EMA, training mode) and apply the learned clip (PACT)."""
        if self.method == "ema" and self.training:
            with torch.no_grad():
                m = self.momentum
                self.lo.mul_(1 - m).add_(m * torch.clamp(x.min(), max=0.0))
                self.hi.mul_(1 - m).add_(m * torch.clamp(x.max(), min=0.0))
        if self.method == "pact":
            x = torch.minimum(torch.maximum(x, self.lo.to(x.dtype)), self.hi.to(x.dtype))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.requant(self.observe(x))

    def requant(self, x: torch.Tensor) -> torch.Tensor:
        """Round onto the current grid (no statistics update); differentiable as LSQ/STE."""
        if self.method == "sign":
            s = grad_scale(self.scale, 1.0 / math.sqrt(max(x[0].numel(), 1))).abs().clamp_min(_EPS)
            return binary_ste(x, s.to(x.dtype), self.binary_zp)
        s, z = self.scale_zp()
        if self.method == "lsq":
            qp = max(self.qmax - self.fixed_zp, 1.0)
            s = grad_scale(s, 1.0 / math.sqrt(max(x[0].numel(), 1) * qp))
        return _fq(x, s.to(x.dtype), z.to(x.dtype), self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"method={self.method}, bits={self.bits}, range=[{self.qmin}, {self.qmax}]"


class WeightFakeQuant(nn.Module):
    """Symmetric, narrow-range weight fake-quant, per output channel (axis 0) or per tensor."""

    def __init__(self, w: torch.Tensor, bits: int, method: str = "lsq", per_channel: bool = True, init: str = "lsq") -> None:
        super().__init__()
        if bits == 1:
            method = "xnor"
        elif method not in WEIGHT_METHODS:
            raise RecipeError(f"unknown weight range method {method!r}; use one of {WEIGHT_METHODS}")
        self.method = method
        self.bits = int(bits)
        self.per_channel = per_channel
        self.qmin, self.qmax = qrange(self.bits, True, True)
        self.channels = int(w.shape[0])
        if method == "lsq":
            if init not in WEIGHT_INITS:
                raise RecipeError(f"unknown LSQ weight step init {init!r}; use one of {WEIGHT_INITS}")
            a = w.detach().abs().reshape(self.channels, -1) if per_channel else w.detach().abs().reshape(1, -1)
            # LSQ's 2*mean|w|/sqrt(Q_P), or the min/max step max|w|/Q_P (from a pretrained net at 4+ bits
            # the min/max grid starts closer: no weight is clipped, see bench/qat.py)
            s0 = 2.0 * a.mean(1) / math.sqrt(self.qmax) if init == "lsq" else a.amax(1) / self.qmax
            self.scale = nn.Parameter(torch.where(s0 > 0, s0, torch.full_like(s0, 1e-3)).float())

    def _view(self, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return s.reshape((-1,) + (1,) * (w.ndim - 1))

    def scale_for(self, w: torch.Tensor) -> torch.Tensor:
        """The step per output channel (C,) that ``forward(w)`` uses."""
        if self.method == "lsq":
            s = self.scale.abs().clamp_min(_EPS)
        elif self.method == "xnor":
            a = w.abs()
            s = a.reshape(self.channels, -1).mean(1) if self.per_channel else a.mean().reshape(1)
            s = s.clamp_min(_EPS)
        else:  # minmax
            a = w.detach().abs()
            m = a.reshape(self.channels, -1).amax(1) if self.per_channel else a.amax().reshape(1)
            s = torch.where(m > 0, m / self.qmax, torch.ones_like(m))
        return s.expand(self.channels) if s.numel() == 1 else s

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.method == "xnor":
            return sign_ste(w) * self._view(self.scale_for(w), w)
        s = self.scale_for(w)
        if self.method == "lsq":
            n = w[0].numel() if self.per_channel else w.numel()
            s = grad_scale(s, 1.0 / math.sqrt(n * self.qmax))
        return _fq(w, self._view(s, w).to(w.dtype), torch.zeros((), dtype=w.dtype, device=w.device), self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"method={self.method}, bits={self.bits}, per_channel={self.per_channel}"
