"""Shared test check: every instruction of an integer program against its float (SIM) twin."""
from __future__ import annotations

import numpy as np
import torch

from edgequant.interpreter import run
from edgequant.kernels import SIM
from edgequant.kernels.context import KernelContext
from edgequant.qmath import round_half_away

EXACT_OPS = ("transpose", "reshape", "embedding")  # data movement and table gathers: no rounding


def twin_errors(q, x) -> list[tuple[object, int]]:
    """(instruction, max |SIM twin - run| in LSB of its output grid) for every instruction but the
    program's quantize/dequantize, each fed the run's own integer inputs (``x``: an array or a
    dict of feeds). Also checks each output's dtype is the one the program declares."""
    p, env = q.program, {}
    run(p, x, trace=lambda ins, v: env.__setitem__(ins.output, v))
    if isinstance(x, dict):
        env.update(x)
    ctx = KernelContext("gemmlowp", p.tensors)
    out = []
    for ins in p.instrs:
        if ins.op in ("quantize", "dequantize"):
            continue
        assert env[ins.output].dtype == np.dtype(p.tensors[ins.output].dtype), ins.output
        sim_in = []
        for i in ins.inputs:
            qp = p.tensors[i].qparams
            sim_in.append(torch.as_tensor(env[i]) if qp is None else  # masks, token ids: as they are
                          torch.as_tensor((env[i].astype(np.float64) - int(qp.zero_point)) * float(qp.scale)))
        qy = p.tensors[ins.output].qparams
        s = SIM[ins.op](ins, sim_in, ctx).numpy()
        d = np.abs(round_half_away(s / float(qy.scale)) + int(qy.zero_point) - env[ins.output].astype(np.int64))
        out.append((ins, int(d.max(initial=0))))
    return out


def assert_within_one_lsb(q, x) -> set[str]:
    """``twin_errors`` within 1 LSB (0 for ``EXACT_OPS``); returns the ops that touched an int16 tensor."""
    p, wide = q.program, set()
    for ins, d in twin_errors(q, x):
        assert d <= (0 if ins.op in EXACT_OPS else 1), (ins.op, ins.output, d)
        if any(p.tensors[t].dtype == "int16" for t in [ins.output, *ins.inputs]):
            wide.add(ins.op)
    return wide
