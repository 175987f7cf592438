"""Lower a prepared QGraph + activation qparams into a runnable Program.

One function per (mode, op) in the tables of ``core`` (``STATIC`` for integer-only programs,
``FLOAT`` for fp32/fp16/dynamic ones); each op module below registers its own entries, so adding
an op is one module entry. Integer lowering follows the TFLite int8 spec (see ``gemm``).
"""
from __future__ import annotations

from ..errors import RecipeError, UnsupportedOpError
from ..feeds import INT_DTYPE, is_int_input
from ..ir import Graph, Node
from ..lowbit.binary_act import is_binary_tensor, lower_binary_output
from ..program import Instr, Program, TensorInfo
from ..qmath import QParams
from ..recipes import Recipe
from ..wide import dtype_name
from .core import FLOAT, REQUANT_OPS, STATIC, Lowering, check_wide_inputs, act_int_bounds, register, requant_arrays
from . import gemm, basic, elementwise, transformer, shape, rnn, hf  # noqa: F401  (fill the tables)


def lower(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None = None) -> Program:
    """Prepared graph (BN folded, activations fused) -> Program for ``recipe``."""
    L = Lowering(graph, recipe, act_qp or {})
    table = STATIC if recipe.mode == "static" else FLOAT
    for name in graph.inputs:
        inp = graph.node(name)
        L.where[inp.name] = inp.name
        if is_int_input(inp.attrs):  # token ids / padding masks: int64 in, never quantized
            L.tensors[inp.name] = TensorInfo(INT_DTYPE, inp.shape)
            continue
        L.tensors[inp.name] = TensorInfo("float32", inp.shape)
        if recipe.mode == "static":
            if inp.name not in L.act_qp:
                raise RecipeError("static recipes need calibrated activation qparams")

            def _quantize_input(L: Lowering, n: Node) -> None:
                L.emit("quantize", n, [n.name], out=n.name + ".q",
                       info=TensorInfo(dtype_name(L.act_qp[n.name]), n.shape, L.act_qp[n.name]))

            if is_binary_tensor(L.act_qp[inp.name]):
                lower_binary_output(L, inp, _quantize_input)
            else:
                _quantize_input(L, inp)
    for node in graph.nodes:
        if node.op == "input":
            continue
        if node.op not in table:
            raise UnsupportedOpError(f"{node.describe()}: no {recipe.mode} lowering for op {node.op!r} (run passes.prepare first)")
        if recipe.mode == "static":
            check_wide_inputs(L, node)
        if recipe.mode == "static" and is_binary_tensor(L.act_qp.get(node.name)):
            lower_binary_output(L, node, table[node.op])  # 1-bit output: 8-bit carrier + binarize
        else:
            table[node.op](L, node)
    out = L.where[graph.output]
    if L.tensors[out].dtype in ("int8", "int16"):
        outn = graph.node(graph.output)
        L.instrs.append(Instr("dequantize", [out], "output", {}, {}, outn.name))
        L.tensors["output"] = TensorInfo("float32", outn.shape)
        out = "output"
    meta = {"recipe": recipe.to_dict()}
    return Program(L.instrs, graph.input, out, L.tensors, meta, list(graph.extra_inputs))



__all__ = ["lower", "Lowering", "STATIC", "FLOAT", "REQUANT_OPS", "register", "act_int_bounds", "requant_arrays"]
