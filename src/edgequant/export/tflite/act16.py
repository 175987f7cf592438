"""Which 16-bit-activation programs (act16, e.g. ``w8a16-res``) export to TFLite 16x8, and a clear
refusal, by layer, of the rest.

TFLite's 16x8 scheme is what act16 lowers to: int16 activations (symmetric, zero point 0), int8
per-channel weights, int64 bias and accumulators. LiteRT has 16x8 kernels for the CNN operators
below, and each takes one activation type for all its inputs and its output. So an instruction
that touches an int16 tensor exports when its op is in ``OPS_16X8`` and every integer tensor it
reads or writes is int16. Refused: an int8 -> int16 step inside one instruction (act16 on a
transformer widens at the attention boundary; TFLite has no such kernel, and a QUANTIZE between
would round twice where the program rounds once), and the int16 transformer ops (LayerNorm,
16x16 BATCH_MATMUL, 16-bit SOFTMAX), which have no TFLite emitter yet.
"""
from __future__ import annotations

from ...errors import ExportError
from ...program import Program

# program ops whose int16 form has a LiteRT 16x8 kernel: QUANTIZE (float32 -> int16), DEQUANTIZE,
# CONV_2D / DEPTHWISE_CONV_2D, CONV_2D 1x1 or FULLY_CONNECTED, ADD, PAD, MEAN, GATHER (tables),
# RESHAPE, TRANSPOSE
OPS_16X8 = frozenset({"quantize", "dequantize", "conv", "linear", "add", "pad", "mean", "lut", "reshape", "transpose"})
_INT = ("int8", "int16")


def check_16x8(program: Program) -> None:
    """Raise ``ExportError`` naming the first layer whose 16-bit tensors TFLite cannot compute as
    the program does (see the module docstring); a program without int16 tensors passes."""
    name = program.meta.get("recipe", {}).get("name", "?")
    fix = ("export it to ONNX or run it with the interpreter (q.run), or quantize with 8-bit activations "
           "(e.g. 'w8a8-pc') for TFLite")
    for ins in program.instrs:
        ints = {t: program.tensors[t].dtype for t in (*ins.inputs, ins.output) if program.tensors[t].dtype in _INT}
        wide = [t for t, d in ints.items() if d == "int16"]
        if not wide:
            continue
        if ins.op not in OPS_16X8:
            raise ExportError(f"recipe {name!r}: layer '{ins.node}' ({ins.op}) has a 16-bit activation ('{wide[0]}') and "
                              f"TFLite 16x8 export covers only {', '.join(sorted(OPS_16X8))}; an int16 {ins.op} has no "
                              f"TFLite emitter yet: {fix}")
        narrow = [t for t, d in ints.items() if d == "int8"]
        if narrow:
            raise ExportError(f"recipe {name!r}: layer '{ins.node}' ({ins.op}) mixes int8 '{narrow[0]}' and int16 "
                              f"'{wide[0]}' (a mixed 8/16-bit program); TFLite's 16x8 kernels take int16 on every "
                              f"activation, and an int8 <-> int16 QUANTIZE between would round twice where the "
                              f"program rounds once: {fix}")
        if ins.op in ("conv", "linear") and not ins.attrs.get("acc64"):
            raise ExportError(f"layer '{ins.node}': an int16 {ins.op} without the 64-bit accumulator (attrs 'acc64'); "
                              "quantize the model again with this version to export it to TFLite")
