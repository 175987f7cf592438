"""Lowering of 1-bit activations: binary tensors and the GEMMs that consume them.

A 1-bit activation tensor holds -1/+1 in its int8 container; its qparams are the calibrated 1-bit
ones (``scale``, ``zero_point`` in {-1, 0, 1}), so its two real levels are
``scale * (-1 - zp)`` and ``scale * (1 - zp)``: ``{-s, +s}`` for a signed tensor (XNOR-Net's
``sign``), ``{0, 2s}`` for a non-negative one (post-ReLU: "active or not"). Any instruction that
produces such a tensor is lowered to produce an 8-bit *carrier* over the same real range, followed
by ``binarize`` (+1 iff the value reaches the midpoint of the two levels): one rule for conv,
linear, add, mean and the network input, and no other kernel has to know about binary outputs.

A conv/linear whose weights are +-1 (``xnor``) and whose input is a 1-bit tensor becomes
``conv_xnor``/``linear_xnor``: the interpreter computes its dot products with XOR and popcount.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..ir import Node
from ..program import Instr, TensorInfo
from ..qmath import QParams, compute_qparams

CARRIER_BITS = 8


def carrier_qparams(qb: QParams) -> QParams:
    """8-bit qparams over the real range a 1-bit tensor represents."""
    s, z = float(qb.scale), int(qb.zero_point)
    return compute_qparams(s * (-1 - z), s * (1 - z), CARRIER_BITS, signed=True)


def binary_threshold(qb: QParams, qc: QParams) -> int:
    """Carrier integer at or above which a value binarizes to +1 (the levels' midpoint)."""
    mid = float(qb.scale) * (0 - int(qb.zero_point))
    t = int(qc.zero_point) + mid / float(qc.scale)
    return int(math.ceil(t - 1e-9))


def is_binary_tensor(qp: QParams | None) -> bool:
    return qp is not None and qp.bits == 1


def lower_binary_output(L, node: Node, emit: Callable) -> None:
    """Run ``emit(L, node)`` with an 8-bit carrier in place of the node's 1-bit qparams, then
    binarize its output into the tensor consumers read."""
    qb = L.act_qp[node.name]
    qc = carrier_qparams(qb)
    L.act_qp[node.name] = qc
    try:
        emit(L, node)
    finally:
        L.act_qp[node.name] = qb
    last = L.instrs[-1]
    out, pre = last.output, last.output + ".pre"
    last.output = pre
    L.tensors[pre] = L.tensors.pop(out)
    L.instrs.append(Instr("binarize", [pre], out, {"threshold": binary_threshold(qb, qc)}, {}, node.name))
    L.tensors[out] = TensorInfo("int8", L.tensors[pre].shape, qb)
    L.where[node.name] = out


def gemm_op(op: str, w_int: np.ndarray, weight_bits: int, x_qp: QParams | None) -> str:
    """``conv_xnor``/``linear_xnor`` for +-1 weights on a 1-bit input, else ``op`` unchanged."""
    if weight_bits == 1 and is_binary_tensor(x_qp) and w_int.size and bool(np.all(np.abs(w_int) == 1)):
        return op + "_xnor"
    return op
