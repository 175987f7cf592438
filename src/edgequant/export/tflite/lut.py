"""TFLite emitter for lookup tables (``lut``: sigmoid, hardswish, SiLU, GELU, affine, ... on int8/int16).

LiteRT has no table operator, but a table lookup is a GATHER: ``CAST`` the int8 (int16) codes to
int32, subtract the table's first code, ``GATHER`` from the instruction's own 256-entry int8
(65536-entry int16, act16) table (the gemmlowp-mode table ``q.run`` uses). Bit-exact by
construction, and the same for every function -- the file computes what the program computes
instead of LiteRT's own float-derived or interpolated kernels (LOGISTIC, HARD_SWISH, ...), which
round differently. Registered into ``core.EMITTERS``.
"""
from __future__ import annotations

import numpy as np

from ...program import Instr
from .builder import OPS, TENSOR_TYPES
from .core import Emitter, register

OPS.update({"CAST": (53, "CastOptions", 37), "GATHER": (36, "GatherOptions", 23)})


@register("lut")
def _lut(e: Emitter, ins: Instr) -> None:
    src = ins.inputs[0]
    form = e.form_of(src)
    x = e.where[src][form]
    shape = e.m.tensors[x].shape
    codes = e.m.tensor(f"{ins.output}/codes", shape, "int32")
    e.m.op("CAST", [x], [codes], InDataType=TENSOR_TYPES[e.dtype(src)], OutDataType=TENSOR_TYPES["int32"])
    index = e.m.tensor(f"{ins.output}/index", shape, "int32")
    e.m.op("ADD", [codes, e.m.const(f"{ins.output}/offset", np.array([-int(ins.attrs["in_qmin"])], np.int32))], [index],
           FusedActivationFunction=0)
    dt = e.dtype(ins.output)
    table = e.m.const(f"{ins.output}/table", ins.arrays["table"].astype(dt), dt, e.quant(ins.output))
    out = e.define(ins.output, form)
    e.m.op("GATHER", [table, index], [out], Axis=0, BatchDims=0)

