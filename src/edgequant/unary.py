"""Element-wise one-input functions (sigmoid, hardswish, GELU, ..., and ``a*x + b`` with constant
``a``/``b``): their float definitions, shared by the float executor, calibration, lowering and the
fake-quant twin.

On an 8-bit tensor each is a 2^bits-entry lookup table built at lowering from these definitions
(DESIGN.md: "other element-wise nonlinearities on 8-bit tensors are 256-entry lookup tables"), so
one definition here fixes what every engine computes. Evaluated in torch float64 for tables.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import UnsupportedOpError


def _gelu(x: torch.Tensor, a: dict) -> torch.Tensor:
    return F.gelu(x, approximate=a.get("approximate", "none"))


FUNCTIONS = {
    "sigmoid": lambda x, a: torch.sigmoid(x),
    "tanh": lambda x, a: torch.tanh(x),
    "hardsigmoid": lambda x, a: F.hardsigmoid(x),
    "hardswish": lambda x, a: F.hardswish(x),
    "silu": lambda x, a: F.silu(x),
    "gelu": _gelu,
    "mish": lambda x, a: F.mish(x),
    "leaky_relu": lambda x, a: F.leaky_relu(x, a["alpha"]),
    "elu": lambda x, a: a.get("scale", 1.0) * torch.where(x > 0, x, a["alpha"] * torch.expm1(x * a.get("input_scale", 1.0))),
    "affine": lambda x, a: x * a["mul"] + a["add"],
}


def apply(fn: str, attrs: dict, x: torch.Tensor) -> torch.Tensor:
    """``fn`` (a key of ``FUNCTIONS``) with its ``attrs`` on a float tensor."""
    if fn not in FUNCTIONS:
        raise UnsupportedOpError(f"element-wise function {fn!r} is unknown; known: {', '.join(sorted(FUNCTIONS))}")
    return FUNCTIONS[fn](x, attrs)

