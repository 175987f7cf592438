"""Kernel tables: ``RUN[op]`` is the reference (NumPy, integer inside the integer region) and
``SIM[op]`` the float fake-quant model of the same instruction (torch, float64).

Adding an op = one run function + one sim function + one table entry + one test.
"""
from __future__ import annotations

from typing import Callable

RUN: dict[str, Callable] = {}
SIM: dict[str, Callable] = {}


def register(op: str, table: dict) -> Callable:
    def deco(fn: Callable) -> Callable:
        table[op] = fn
        return fn

    return deco


def run_kernel(op: str) -> Callable:
    return RUN[op]


from . import conv, elementwise, pool, quant, binary, lut, mul, transformer  # noqa: E402,F401  (fill the tables)
from . import shape  # noqa: E402,F401  (slice, upsample, const)
from . import rnn  # noqa: E402,F401  (LSTM/GRU layer-directions)
from . import masked  # noqa: E402,F401  (embedding, masked softmax, maskmul, reduce)
