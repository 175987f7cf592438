"""The reference interpreter: runs a Program instruction by instruction (the spec), and its float
fake-quant twin ``simulate`` over the same instructions.

Integer tensors are int8 NumPy arrays; accumulators are exact int64 holding int32 values.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .errors import InputError
from .kernels import RUN, SIM
from .kernels.context import KernelContext
from .program import Instr, Program
from .qmath import check_rounding


def check_input(program: Program, x: np.ndarray) -> None:
    """``InputError`` unless ``x`` is a (N, ...) batch of the per-sample shape the program was captured for."""
    want = program.input_shape
    if x.ndim != len(want) or tuple(x.shape[1:]) != tuple(want[1:]):
        raise InputError(f"input has shape {tuple(x.shape)}; the model was captured for (N, {', '.join(map(str, want[1:]))})")


def run(program: Program, x: np.ndarray, rounding: str = "gemmlowp", return_int: bool = False,
        trace: Callable[[Instr, np.ndarray], None] | None = None) -> np.ndarray:
    """Execute ``program`` on float input ``x``. ``return_int`` returns the integer output tensor.

    ``trace(instr, value)`` is called after every instruction (the artifact loader checks each
    tensor's shape and dtype against the program with it).
    """
    check_rounding(rounding)
    x = np.ascontiguousarray(np.asarray(x, np.float32))
    check_input(program, x)
    ctx = KernelContext(rounding, program.tensors)
    env = {program.input: x}
    for ins in program.instrs:
        if return_int and ins.op == "dequantize" and ins.output == program.output:
            return env[ins.inputs[0]]
        env[ins.output] = RUN[ins.op](ins, [env[i] for i in ins.inputs], ctx)
        if trace is not None:
            trace(ins, env[ins.output])
    return env[program.output]


def simulate(program: Program, x, rounding: str = "gemmlowp", return_int: bool = False,
             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Float fake-quant model of the same program (float64 by default, so only rounding differs)."""
    check_rounding(rounding)
    xt = torch.as_tensor(np.asarray(x, np.float32) if not isinstance(x, torch.Tensor) else x).to(dtype)
    check_input(program, xt.numpy() if not xt.requires_grad else xt.detach().numpy())
    ctx = KernelContext(rounding, program.tensors)
    env = {program.input: xt}
    for ins in program.instrs:
        if return_int and ins.op == "dequantize" and ins.output == program.output:
            qp = program.tensors[ins.inputs[0]].qparams
            return torch.round(env[ins.inputs[0]] / float(qp.scale)) + int(qp.zero_point)
        env[ins.output] = SIM[ins.op](ins, [env[i] for i in ins.inputs], ctx)
    return env[program.output]
