"""Per-layer studies of a quantized program against the float graph.

* ``layer_sqnr`` -- SQNR (dB) of every quantized layer's output in the integer program (errors of
  all earlier layers included, as a device would compute it) against the fp32 graph's output of
  the same node: ``10 log10(sum(ref^2) / sum((ref - q)^2))``.
* ``sensitivity`` -- one layer at a time: the fp32 graph runs with only that layer replaced by the
  program's own instruction(s) for it (fake-quant twin ``SIM``, fed the fp32 input quantized onto
  the program's input grid), so the accuracy drop is what that layer alone costs at its width.

Program instructions name their graph node (``Instr.node``); that is the only link needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .. import interpreter
from ..feeds import batch_size, input_value, take
from ..deadline import check_deadline
from ..graph_exec import GraphModule, run_node
from ..ir import Graph
from ..kernels import SIM
from ..kernels.context import KernelContext
from ..program import Instr, Program
from ..qmath import dequantize


@dataclass
class Layer:
    node: str  # graph node (also the program tensor name of its output)
    op: str  # instruction op, e.g. "conv", "linear_dyn"
    module: str  # nn.Module path, e.g. "features.0.0"
    weight_bits: int | None
    instrs: list[Instr]  # every instruction lowered from this node, in program order


def quantized_layers(program: Program, graph: Graph) -> list[Layer]:
    """Nodes whose instructions hold non-fp32 weights (the layers a recipe actually quantizes)."""
    nodes = graph.by_name()
    by_node: dict[str, list[Instr]] = {}
    for ins in program.instrs:
        by_node.setdefault(ins.node, []).append(ins)
    out = []
    for name, instrs in by_node.items():
        w = next((i for i in instrs if "weight" in i.arrays), None)
        if w is None or w.arrays["weight"].dtype == np.float32 or name not in nodes:
            continue
        bits = w.attrs.get("weight_bits", 16 if w.arrays["weight"].dtype == np.float16 else None)
        out.append(Layer(name, w.op, nodes[name].module, bits, instrs))
    return out


def _real(v, name: str, program: Program) -> np.ndarray:
    """A program tensor's value in real units (integer tensors dequantized with their qparams)."""
    info = program.tensors.get(name)
    a = np.asarray(v)
    if info is not None and info.qparams is not None and np.issubdtype(a.dtype, np.integer):
        return dequantize(a, info.qparams)
    return a.astype(np.float32)


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float | None:
    """None when the two are identical (infinite SQNR)."""
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((ref - np.asarray(test, np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return None
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def float_outputs(graph: Graph, x: torch.Tensor, names: set[str]) -> dict[str, np.ndarray]:
    keep: dict[str, np.ndarray] = {}

    def hook(node, y):
        if node.name in names:
            keep[node.name] = y.detach().numpy()
        return y

    with torch.no_grad():
        GraphModule(graph)(x if isinstance(x, dict) else x.float(), hook)  # a dict batch: GraphModule casts each input
    return keep


def program_outputs(program: Program, x: np.ndarray, names: set[str], rounding: str = "gemmlowp") -> dict[str, np.ndarray]:
    """Run the reference interpreter and keep the real value of each named node's last output."""
    last = {ins.node: ins.output for ins in program.instrs if ins.node in names}
    want = {t: n for n, t in last.items()}
    keep: dict[str, list[np.ndarray]] = {}

    def trace(ins: Instr, value: np.ndarray) -> None:  # called once per chunk of the batch
        if ins.output in want:
            keep.setdefault(want[ins.output], []).append(_real(value, ins.output, program))

    interpreter.run(program, x, rounding=rounding, trace=trace)
    return {k: np.concatenate(v) for k, v in keep.items()}


SQNR_MEMORY_MB = 192  # float copies of every node's output held at once by ``layer_sqnr``
SENSITIVITY_MEMORY_MB = 256  # the same for one batch of ``sensitivity``


def graph_bytes_per_sample(graph: Graph) -> int:
    """Bytes of one sample's outputs of *every* node, float32 reference and float64 program copy.

    ``GraphModule`` and ``sensitivity`` keep every node's output of a batch (no liveness), so this,
    not the live peak, sizes their chunks.
    """
    elems = sum(int(np.prod(tuple(n.shape)[1:], dtype=np.int64)) for n in graph.nodes if len(tuple(n.shape)) > 1)
    return 12 * max(elems, 1)


def layer_sqnr(program: Program, graph: Graph, x: torch.Tensor | dict, rounding: str = "gemmlowp",
               memory_mb: float = SQNR_MEMORY_MB) -> list[dict]:
    """[{layer, module, op, weight_bits, sqnr_db}] for every quantized layer, in program order.

    Streams over chunks of samples sized so the outputs of all nodes (fp32 reference, program copy)
    stay within ``memory_mb``: only the per-layer signal and noise sums are kept.
    """
    layers = quantized_layers(program, graph)
    names = {l.node for l in layers}
    total = batch_size(x)  # a tensor, or a dict of keyword inputs (token ids, masks)
    chunk = int(max(1, min(total, memory_mb * 2**20 // max(graph_bytes_per_sample(graph), 1))))
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    for s in range(0, total, chunk):
        check_deadline("per-layer SQNR")
        xs = take(x, s, min(s + chunk, total))
        ref = float_outputs(graph, xs, names)
        got = program_outputs(program, {k: np.asarray(v) for k, v in xs.items()} if isinstance(xs, dict) else xs.numpy(),
                              names, rounding)
        for n in names:
            if n in ref and n in got:
                r = np.asarray(ref[n], np.float64)
                signal[n] = signal.get(n, 0.0) + float(np.sum(r**2))
                noise[n] = noise.get(n, 0.0) + float(np.sum((r - np.asarray(got[n], np.float64)) ** 2))
        del ref, got
    return [{"layer": l.node, "module": l.module, "op": l.op, "weight_bits": l.weight_bits,
             "sqnr_db": _db(signal[l.node], noise[l.node])} for l in layers if l.node in signal]


def _db(signal: float, noise: float) -> float | None:
    """As ``sqnr_db`` from the two sums."""
    if noise == 0.0:
        return None
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _producer_nodes(program: Program) -> dict[str, str]:
    """Program tensor -> graph node whose float value it carries (``x.q`` -> ``x``)."""
    m = {program.input: program.input}
    for ins in program.instrs:
        m[ins.output] = ins.node
    return m


def _quantized_output(program: Program, layer: Layer, env: dict[str, torch.Tensor], ctx: KernelContext,
                      producer: dict[str, str]) -> torch.Tensor:
    """The layer's output as the program computes it (``SIM``), from the fp32 values of its inputs
    put on the program's input grid."""
    local: dict[str, torch.Tensor] = {}
    for ins in layer.instrs:
        args = []
        for t in ins.inputs:
            if t in local:
                args.append(local[t])
                continue
            v = env[producer[t]].to(torch.float64)
            info = program.tensors.get(t)
            args.append(ctx.fq(v, t) if info is not None and info.qparams is not None else v)
        local[ins.output] = SIM[ins.op](ins, args, ctx)
    return local[layer.instrs[-1].output].to(torch.float32)


def sensitivity(program: Program, graph: Graph, batches: list[tuple[torch.Tensor, torch.Tensor]],
                score: Callable[[torch.Tensor, torch.Tensor], float], rounding: str = "gemmlowp",
                progress: Callable[[str], None] | None = None) -> list[dict]:
    """[{layer, module, op, weight_bits, score}]: the metric with only that layer quantized.

    Per batch the fp32 graph runs once; each layer then replays only the nodes after it.
    """
    ctx = KernelContext(rounding, program.tensors)
    producer = _producer_nodes(program)
    params = {n.name: {k: torch.as_tensor(v, dtype=torch.float32) for k, v in n.params.items()} for n in graph.nodes}
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    todo = quantized_layers(program, graph)
    logits: dict[str, list[torch.Tensor]] = {l.node: [] for l in todo}
    with torch.no_grad():
        for b, (x, _) in enumerate(batches):
            env: dict[str, torch.Tensor] = {}
            for n in graph.nodes:
                env[n.name] = (input_value(x, n) if n.op == "input"
                               else run_node(n, [env[i] for i in n.inputs], params[n.name]))
            for layer in todo:
                check_deadline("sensitivity")  # a sweep's time limit bites between layers
                if progress and b == 0:
                    progress(layer.node)
                new = {layer.node: _quantized_output(program, layer, env, ctx, producer)}
                for n in graph.nodes[order[layer.node] + 1:]:
                    new[n.name] = run_node(n, [new.get(i, env[i]) for i in n.inputs], params[n.name])
                logits[layer.node].append(new.get(graph.output, env[graph.output]).float())
    y = torch.cat([b[1] for b in batches])
    return [{"layer": l.node, "module": l.module, "op": l.op, "weight_bits": l.weight_bits,
             "score": score(torch.cat(logits[l.node]), y)} for l in todo]
