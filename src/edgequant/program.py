"""IntProgram: the lowered, runnable form of a quantized model.

A flat list of instructions over named tensors. Integer instructions hold int8 weights, int32
biases and requantization parameters (int32 M0 + shift for gemmlowp, float32 multiplier for the
ONNX Runtime mode); float instructions (fp32/fp16/dynamic recipes) hold float weights. Everything
is plain data (JSON attrs + NumPy arrays) so it saves, loads and exports without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .qmath import QParams


@dataclass
class Instr:
    op: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    node: str = ""  # the graph node it came from (for messages, per-layer reports)


@dataclass
class TensorInfo:
    dtype: str  # "int8" | "float32"
    shape: tuple[int, ...]  # example shape, batch in dim 0
    qparams: QParams | None = None


@dataclass
class Program:
    instrs: list[Instr]
    input: str
    output: str
    tensors: dict[str, TensorInfo]
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.tensors[self.input].shape

    @property
    def output_qparams(self) -> QParams | None:
        """QParams of the integer tensor that is dequantized into the output, if any."""
        last = next((i for i in reversed(self.instrs) if i.output == self.output), None)
        if last is not None and last.op == "dequantize":
            return self.tensors[last.inputs[0]].qparams
        return None

    def summary(self) -> str:
        rows = []
        for i in self.instrs:
            arr = ", ".join(f"{k}:{v.dtype}{list(v.shape)}" for k, v in i.arrays.items())
            rows.append(f"{i.op:<12} {','.join(i.inputs):<30} -> {i.output:<24} {arr}")
        return "\n".join(rows)
