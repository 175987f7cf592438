"""The TFLite emitter: an integer (or fp32) Program -> a ``.tflite`` flatbuffer LiteRT runs.

Int8 programs follow the TFLite int8 quantization spec exactly as lowered: per-channel symmetric
int8 weights (zp 0), int32 bias with scale ``s_in * s_w``, asymmetric int8 activations. LiteRT
derives its fixed-point multipliers from the float32 scales in the file with the same
``QuantizeMultiplier`` the lowering uses, so its reference kernels (``BUILTIN_REF``) reproduce
``interpreter.run(..., rounding="gemmlowp")`` bit for bit. 16-bit-activation programs (act16,
``w8a16-res``) export as TFLite 16x8 (int16 activations, int8 weights, int64 bias) where every
layer has a 16x8 kernel; ``act16.check_16x8`` refuses the rest by layer.

Layout: edgequant tensors are NCHW, TFLite kernels NHWC. Each 4-D tensor is kept in whichever
layout its producer wrote and a TRANSPOSE is inserted only where a consumer needs the other one
(conv/pool/mean want NHWC; reshape/linear want edgequant's order). By default (``layout="nchw"``)
the file's float32 input and any 4-D output are NCHW, exactly what ``q.run`` takes and returns;
``layout="nhwc"`` makes them NHWC (no transposes at the edges). The batch dimension is dynamic
(shape signature -1; ``Interpreter.resize_tensor_input``), the stored shape uses ``batch_size``;
a file with an LSTM has the fixed batch ``batch_size``, the shape of its variable state tensors
(``run_tflite`` feeds larger batches in chunks).

Emitters are a table keyed by instruction op (``core.EMITTERS``), filled by the op modules
imported below; an instruction with no entry is an ``ExportError``.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import ExportError
from ..files import check_options, refuse_group_weights, write_file
from ...program import Program
from . import conv, elementwise, pool, shape, lut, rnn  # noqa: F401  (fill the table)
from .act16 import check_16x8
from .core import EMITTERS, Emitter, tflite_act_range

OPTIONS = ("layout", "batch_size", "linear")


def _program(q) -> Program:
    return q if isinstance(q, Program) else q.program


def _check_recipe(program: Program) -> None:
    recipe = program.meta.get("recipe", {})
    mode, name = recipe.get("mode"), recipe.get("name", "?")
    for ins in program.instrs:
        if ins.op == "rnn" or (ins.op in ("rnn_dyn", "rnn_f") and ins.attrs["cell"] == "gru"):
            rnn.check(ins)  # a GRU, or an integer LSTM TFLite's kernel cannot compute: refused by name
        elif ins.op in ("rnn_dyn", "rnn_f"):
            raise ExportError(f"layer '{ins.node}' is a float/dynamic LSTM (recipe {name!r}); edgequant exports recurrent "
                              "layers to TFLite as the integer LSTM only: quantize with a static per-tensor recipe "
                              "(e.g. 'w8a8'), or export to ONNX")
    if mode in ("dynamic", "fp16"):
        raise ExportError(f"recipe {name!r} ({mode}) cannot target TFLite with bit-exact semantics; export a static "
                          "integer recipe (e.g. 'w8a8-pc') or 'fp32'")
    refuse_group_weights(program, "TFLite")
    check_16x8(program)  # act16: int16 activations export as TFLite 16x8 where LiteRT computes them exactly
    for t, info in program.tensors.items():
        qp = info.qparams
        if info.dtype == "int8" and qp is not None and (qp.bits != 8 or qp.qmin != -128 or qp.qmax != 127):
            raise ExportError(f"recipe {name!r} cannot target TFLite: tensor '{t}' is a {qp.bits}-bit activation "
                              f"(range [{qp.qmin}, {qp.qmax}]) and LiteRT's int8 kernels saturate to [-128, 127]; "
                              "use 8-bit activations (e.g. 'w4a8' or 'w8a8-pc')")


def to_tflite(q, layout: str = "nchw", batch_size: int = 1, linear: str = "conv") -> bytes:
    """The ``.tflite`` flatbuffer bytes of a QuantizedModel (or Program); see the module docstring."""
    return emit(q, layout, batch_size, linear).m.serialize()


def emit(q, layout: str = "nchw", batch_size: int = 1, linear: str = "conv") -> Emitter:
    """The filled ``Emitter`` ``to_tflite`` serializes; its ``where`` says which TFLite tensor holds
    each program tensor, in which layout (for tools that read LiteRT's intermediate tensors)."""
    program = _program(q)
    _check_recipe(program)
    e = Emitter(program, layout, batch_size, linear)
    x = program.input
    shape = e.shape(x)
    form = "nhwc" if layout == "nhwc" and len(shape) == 4 else "nchw"
    e.define(x, form)
    e.m.inputs = [e.where[x][form]]
    for ins in program.instrs:
        if ins.op not in EMITTERS:
            raise ExportError(f"instruction {ins.op!r} (layer '{ins.node}') has no TFLite emitter; exportable ops: "
                              f"{', '.join(sorted(EMITTERS))}")
        EMITTERS[ins.op](e, ins)
    out = program.output
    want = "nhwc" if layout == "nhwc" else "nchw"
    e.m.outputs = [e.get(out, want)]
    return e


def export_tflite(q, path, **options) -> Path:
    """Write ``q`` as a ``.tflite`` file (options: ``layout``, ``batch_size``); returns the path."""
    check_options("TFLite", options, OPTIONS)
    data = to_tflite(q, **options)
    return write_file("TFLite", path, lambda p: p.write_bytes(data))


__all__ = ["to_tflite", "emit", "export_tflite", "EMITTERS", "tflite_act_range"]
