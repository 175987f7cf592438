"""The ONNX emitter: a Program -> an ONNX model (QDQ by default, QOperator as an option).

Emitters are tables keyed by instruction op, one per style (``core.STYLES``), filled by the op
modules imported below (``core.register``); an instruction with no entry is an ``ExportError``
naming it. The file is checked with ``onnx.checker`` (full check, shape inference) before it is
written.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

from ...errors import ExportError
from ..files import check_options, refuse_group_weights, write_file
from ...program import Program
from . import qdq, qop, float_ops, elementwise, shape, rnn, transformer, masked  # noqa: F401  (fill the tables)
from .core import CIN_ALIGN, OPSET, STYLES, WHY_UINT8, OnnxBuilder

OPTIONS = ("style", "activation_type", "int4_weights", "align_channels", "check")


def _program(q) -> Program:
    return q if isinstance(q, Program) else q.program


# ops with no ONNX operator that runs them, and why (the error says so instead of a bare op name)
NOT_IN_ONNX = {
    "binarize": "binary (+1/-1) activations have no ONNX quantized type",
    "conv_xnor": "XNOR-popcount convolution has no ONNX operator",
    "linear_xnor": "XNOR-popcount matmul has no ONNX operator",
}


def _check_exportable(program: Program, table: dict, style: str, recipe: str) -> None:
    """Refuse the whole program up front, naming the recipe and every layer ONNX cannot hold."""
    bad = [ins for ins in program.instrs if ins.op not in table]
    if not bad:
        return
    layers = ", ".join(f"'{ins.node}' ({ins.op})" for ins in bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    why = sorted({NOT_IN_ONNX[ins.op] for ins in bad if ins.op in NOT_IN_ONNX})
    raise ExportError(
        f"recipe {recipe!r} cannot be exported to ONNX ({style}): no ONNX operator runs layer(s) {layers}"
        + (f" -- {'; '.join(why)}" if why else "")
        + f". Run it with the interpreter (q.run), or quantize with an exportable recipe (e.g. 'w8a8-pc', "
          f"'w4a8', 'w1a8-xnor' for binary weights); exportable instructions: {', '.join(sorted(table))}")


def to_onnx(q, style: str = "qdq", activation_type: str = "uint8", int4_weights: bool = True,
            align_channels: int = CIN_ALIGN, check: bool = True) -> onnx.ModelProto:
    """Build the ONNX model of a QuantizedModel (or Program).

    ``style``: "qdq" (QuantizeLinear/DequantizeLinear around float ops: portable, and what ONNX
    Runtime fuses into integer kernels) or "qoperator" (QLinearConv, QGemm, QLinearAdd, ... --
    ONNX Runtime's contrib ops for the non-conv ops). ``activation_type``: "uint8" (default; see
    ``core.WHY_UINT8``) or "int8". ``int4_weights``: store <= 4-bit weights as INT4.
    ``align_channels``: pad dense convs' input channels to this multiple (exact; faster in ONNX
    Runtime, see ``OnnxBuilder.align_conv_input``); 0 turns it off.

    16-bit activations (act16 recipes: ``w8a16``, ``w8a16-res``) are int16 tensors with opset-21
    QuantizeLinear/DequantizeLinear around float ops in every style (``core.WIDE_TYPE``); ONNX Runtime
    runs those nodes in float32, as ``q.run(rounding="onnxruntime")`` does. Dict-input models
    (token ids, attention masks) get one named graph input per keyword input.
    """
    if style not in STYLES:
        raise ExportError(f"ONNX style {style!r} is not supported; use one of {sorted(STYLES)}")
    program = _program(q)
    table = STYLES[style]
    recipe = program.meta.get("recipe", {})
    _check_exportable(program, table, style, recipe.get("name", "?"))
    refuse_group_weights(program, "ONNX", has_form=frozenset({"linear_dyn"}))  # float_ops._group_matmul
    # the builder may add tensor infos for export-only reshapes; keep them out of the caller's program
    b = OnnxBuilder(dataclasses.replace(program, tensors=dict(program.tensors)), activation_type, int4_weights, align_channels)
    for ins in program.instrs:
        # 16-bit (act16) layers: QDQ in every style -- QLinearConv, QGemm, QLinearAdd, ... are 8-bit only
        emit = STYLES["qdq"][ins.op] if style != "qdq" and b.touches_wide(ins) and ins.op in STYLES["qdq"] else table[ins.op]
        emit(b, ins)
    meta = {"edgequant.recipe": recipe.get("name", ""), "edgequant.style": style,
            "edgequant.activation_type": b.act.name}
    doc = f"edgequant export, recipe {recipe.get('name', '?')}, {style}; " + (WHY_UINT8 if b.act.name == "uint8" else "int8 activations")
    model = b.model(doc, meta)
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"the exported ONNX model fails onnx.checker: {str(e).splitlines()[0]}") from e
    return model


def export_onnx(q, path, **options) -> Path:
    """Write ``q`` as an ONNX file (see ``to_onnx`` for options); returns the path."""
    check_options("ONNX", options, OPTIONS)
    model = to_onnx(q, **options)
    return write_file("ONNX", path, lambda p: onnx.save_model(model, str(p)))


__all__ = ["to_onnx", "export_onnx", "STYLES", "OPSET"]
