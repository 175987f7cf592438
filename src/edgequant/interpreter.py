"""The reference interpreter: runs a Program instruction by instruction (the spec), and its float
fake-quant twin ``simulate`` over the same instructions.

Integer tensors are int8 NumPy arrays; accumulators hold exact integers (int64, or float32 where
a float32 convolution is provably exact, see ``kernels.conv.float_accumulate``).

Memory is bounded independent of the batch: a batch runs in chunks of samples sized from the
program's own tensor shapes (``memory_plan``), and every tensor is dropped after its last use. Every
instruction treats samples independently, so an integer program's chunked output is bit-identical
to unchunked (float programs, fp32/fp16, agree to float rounding: the float library may block a
different batch differently); the exception is a dynamic-quantization program (``conv_dyn``/``linear_dyn`` take their activation
range from the whole batch), which always runs the batch whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import InputError
from .feeds import INT_DTYPE, batch_size, take, to_feeds
from .kernels import RUN, SIM
from .kernels.context import KernelContext
from .program import Instr, Program
from .qmath import check_rounding

# Working memory one run may use on top of its input and output, by default (the interpreter's
# budget is 512 MB of extra peak memory; the estimate below is conservative).
DEFAULT_MEMORY_MB = 256
_BATCH_WIDE_OPS = ("conv_dyn", "linear_dyn", "rnn_dyn")  # activation range taken over the whole batch
_ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "float16": 2, "float32": 4, "float64": 8}


def program_feeds(program: Program, x) -> dict[str, np.ndarray]:
    """``{input name: array}`` for ``program`` from a tensor/array (one input) or a dict batch
    (keyword inputs; integer inputs int64, the others float32); ``InputError`` on a mismatch."""
    ints = {n for n in program.inputs if program.tensors[n].dtype == INT_DTYPE}
    if not isinstance(x, dict) and not ints and len(program.inputs) == 1:
        x = np.ascontiguousarray(np.asarray(x, np.float32))
        check_input(program, x)
        return {program.input: x}
    return to_feeds(x, program.inputs, ints, {n: program.tensors[n].shape for n in program.inputs})


def check_input(program: Program, x: np.ndarray) -> None:
    """``InputError`` unless ``x`` is a (N, ...) batch of the per-sample shape the program was captured for."""
    if isinstance(x, dict) or len(program.inputs) > 1:
        program_feeds(program, x)
        return
    want = program.input_shape
    if x.ndim != len(want) or tuple(x.shape[1:]) != tuple(want[1:]):
        raise InputError(f"input has shape {tuple(x.shape)}; the model was captured for (N, {', '.join(map(str, want[1:]))})")


@dataclass(frozen=True)
class MemoryPlan:
    """What the interpreter needs to run ``program`` in bounded memory."""

    last_use: dict[str, int]  # tensor -> index of the last instruction reading it
    bytes_per_sample: int  # estimated peak working bytes of one sample (run; simulate is 8x for float64)
    batch_wide: bool  # some instruction depends on the whole batch: never chunk

    def chunk(self, n: int, memory_mb: float | None, per_element: int = 1) -> int:
        """Samples per chunk for a batch of ``n`` within ``memory_mb`` (None: the default)."""
        if self.batch_wide or n <= 1:
            return max(n, 1)
        budget = (DEFAULT_MEMORY_MB if memory_mb is None else memory_mb) * 2**20
        return int(max(1, min(n, budget // max(self.bytes_per_sample * per_element, 1))))


def _per_sample(info) -> int:
    shape = tuple(info.shape)
    return int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1


def memory_plan(program: Program) -> MemoryPlan:
    """Liveness and the per-sample peak, computed once per program (cached on it).

    The peak walks the instructions with every live tensor at its stored width plus a transient
    of 16 bytes per element of the larger of each instruction's inputs and output (a float32
    input copy and a float32 accumulator for a convolution, int64 temporaries elsewhere).
    """
    key = tuple((ins.op, tuple(ins.inputs), ins.output) for ins in program.instrs)
    cached = program.__dict__.get("_memory_plan")
    if cached is not None and cached[0] == key:
        return cached[1]
    last_use = {}
    for i, ins in enumerate(program.instrs):
        for t in ins.inputs:
            last_use[t] = i
    last_use[program.output] = len(program.instrs)
    sizes = {name: _per_sample(info) * _ITEMSIZE.get(info.dtype, 8) for name, info in program.tensors.items()}
    elems = {name: _per_sample(info) for name, info in program.tensors.items()}
    live = {program.input: 4 * elems.get(program.input, 1)}
    peak = 0
    for i, ins in enumerate(program.instrs):
        transient = 16 * max([elems.get(ins.output, 1)] + [elems.get(t, 1) for t in ins.inputs])
        live[ins.output] = sizes.get(ins.output, 8)
        peak = max(peak, sum(live.values()) + transient)
        for t in set(ins.inputs):
            if last_use.get(t) == i:
                live.pop(t, None)
    plan = MemoryPlan(last_use, int(peak), any(ins.op in _BATCH_WIDE_OPS for ins in program.instrs))
    program.__dict__["_memory_plan"] = (key, plan)
    return plan


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def run(program: Program, x: np.ndarray, rounding: str = "gemmlowp", return_int: bool = False,
        trace: Callable[[Instr, np.ndarray], None] | None = None, chunk: int | None = None,
        memory_mb: float | None = None) -> np.ndarray:
    """Execute ``program`` on float input ``x``. ``return_int`` returns the integer output tensor.

    The batch runs in chunks of ``chunk`` samples (None: as many as fit ``memory_mb``, default
    ``DEFAULT_MEMORY_MB``); the result does not depend on the chunking. ``trace(instr, value)`` is
    called after every instruction of every chunk (the artifact loader checks each tensor's shape
    and dtype against the program with it).
    """
    check_rounding(rounding)
    x = program_feeds(program, x)  # {input name: array}; one entry for a one-input program
    n = batch_size(x)
    plan = memory_plan(program)
    size = chunk if chunk is not None and not plan.batch_wide else plan.chunk(n, memory_mb)
    if size >= n:
        return _run_chunk(program, x, rounding, return_int, trace, plan)
    parts = [_run_chunk(program, take(x, s, e), rounding, return_int, trace, plan) for s, e in _chunks(n, size)]
    return np.concatenate(parts)


def _run_chunk(program: Program, x: dict, rounding: str, return_int: bool, trace, plan: MemoryPlan) -> np.ndarray:
    ctx = KernelContext(rounding, program.tensors)
    env = dict(x)
    for i, ins in enumerate(program.instrs):
        if return_int and ins.op == "dequantize" and ins.output == program.output:
            return env[ins.inputs[0]]
        env[ins.output] = RUN[ins.op](ins, [env[t] for t in ins.inputs], ctx)
        if trace is not None:
            trace(ins, env[ins.output])
        for t in ins.inputs:
            if plan.last_use.get(t) == i:
                env.pop(t, None)
    return env[program.output]


def simulate(program: Program, x, rounding: str = "gemmlowp", return_int: bool = False,
             dtype: torch.dtype = torch.float64, chunk: int | None = None, memory_mb: float | None = None) -> torch.Tensor:
    """Float fake-quant model of the same program (float64 by default, so only rounding differs).

    Chunked like ``run`` (float64 tensors: 8 bytes per element where ``run`` holds one).
    """
    check_rounding(rounding)
    if isinstance(x, dict) or len(program.inputs) > 1:  # keyword inputs: floats in ``dtype``, ints int64
        xt = {k: torch.from_numpy(v) if v.dtype == np.int64 else torch.from_numpy(v).to(dtype)
              for k, v in program_feeds(program, x).items()}
    else:
        t = torch.as_tensor(np.asarray(x, np.float32) if not isinstance(x, torch.Tensor) else x).to(dtype)
        check_input(program, t.numpy() if not t.requires_grad else t.detach().numpy())
        xt = {program.input: t}
    n = batch_size(xt)
    plan = memory_plan(program)
    size = chunk if chunk is not None and not plan.batch_wide else plan.chunk(n, memory_mb, per_element=8)
    if size >= n:
        return _simulate_chunk(program, xt, rounding, return_int, plan)
    return torch.cat([_simulate_chunk(program, take(xt, s, e), rounding, return_int, plan) for s, e in _chunks(n, size)])


def _simulate_chunk(program: Program, xt: dict, rounding: str, return_int: bool, plan: MemoryPlan) -> torch.Tensor:
    ctx = KernelContext(rounding, program.tensors)
    env = dict(xt)
    for i, ins in enumerate(program.instrs):
        if return_int and ins.op == "dequantize" and ins.output == program.output:
            qp = program.tensors[ins.inputs[0]].qparams
            return torch.round(env[ins.inputs[0]] / float(qp.scale)) + int(qp.zero_point)
        env[ins.output] = SIM[ins.op](ins, [env[t] for t in ins.inputs], ctx)
        for t in ins.inputs:
            if plan.last_use.get(t) == i:
                env.pop(t, None)
    return env[program.output]
