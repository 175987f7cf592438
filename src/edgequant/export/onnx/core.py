"""Building an ONNX graph from a Program: names, initializers, and the integer tensors' Q/DQ.

Every integer tensor of the program becomes one ONNX tensor of the same name holding its
integers in the export's activation type. ONNX Runtime on x86 multiplies uint8 activations by
int8 weights on its fast path (VNNI/AVX2 u8s8 kernels) and is ~50x slower on int8 x int8, so
the default activation type is uint8: ``q_u8 = q_i8 + 128`` with ``zp_u8 = zp_i8 + 128`` -- the
same real numbers, an exact shift. ``activation_type="int8"`` keeps the program's int8 values
(for runtimes that prefer them, e.g. ARM builds or TensorRT).

Sub-8-bit weights (``instr.attrs["weight_bits"] <= 4``) are stored as opset-21 INT4 initializers
(two per byte) and widened by a ``Cast`` to int8 that ONNX Runtime folds at load time, so the
file is small and the runtime still fuses the int8 QLinearConv / QGemm kernels.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import ExportError
from ...packing import pack
from ...kernels.wide_ort import F64_OPS
from ...program import Instr, Program

CIN_ALIGN = 4  # dense convs get input channels padded to a multiple of this (see align_conv_input)
OPSET = 21  # int4 QuantizeLinear/DequantizeLinear/Cast need opset 21
IR_VERSION = 10  # the IR version of opset 21; ONNX Runtime >= 1.17 loads it
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops (QLinearAdd, QLinearConcat, QGemm, ...)


@dataclass(frozen=True)
class ActType:
    """How integer activations are stored in the ONNX file."""

    name: str
    elem_type: int
    np_dtype: type
    offset: int  # added to the program's int8 values (128 for uint8)


ACT_TYPES = {
    "uint8": ActType("uint8", TensorProto.UINT8, np.uint8, 128),
    "int8": ActType("int8", TensorProto.INT8, np.int8, 0),
}

# 16-bit activations (act16): ONNX int16 with the program's integers and zero point (symmetric, 0
# except the softmax grid). Opset 21 QuantizeLinear/DequantizeLinear take int16, and ONNX Runtime's
# CPU provider runs them in the default domain (no com.microsoft Q/DQ needed); it has no int16
# integer kernels, so every node touching int16 runs as DQ -> float32 op -> Q (round half to even).
WIDE_TYPE = ActType("int16", TensorProto.INT16, np.int16, 0)
# graph input types of the program's input dtypes (float images, int64 token ids and masks)
INPUT_TYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "int32": TensorProto.INT32}

WHY_UINT8 = ("uint8 activations: ONNX Runtime on x86 runs uint8 x int8 GEMMs on its fast path "
             "(~2.6 TOP/s on 2 cores) and int8 x int8 ~50x slower; uint8 is the program's int8 "
             "shifted by 128, so the integers are the same")


def act_type(name: str) -> ActType:
    if name not in ACT_TYPES:
        raise ExportError(f"activation_type={name!r} is not supported; use 'uint8' (ONNX Runtime on x86) or 'int8'")
    if name == "int8":
        warnings.warn("activation_type='int8': ONNX Runtime on x86 runs int8 x int8 convolutions and GEMMs "
                      "far slower than uint8 x int8; keep the default 'uint8' for ONNX Runtime CPU.", stacklevel=3)
    return ACT_TYPES[name]


class OnnxBuilder:
    """Accumulates nodes and initializers; knows each program tensor's integer encoding."""

    def __init__(self, program: Program, activation_type: str = "uint8", int4_weights: bool = True,
                 align_channels: int = CIN_ALIGN) -> None:
        self.program = program
        self.act = act_type(activation_type)
        self.int4_weights = int4_weights
        if not isinstance(align_channels, int) or align_channels < 0:
            raise ExportError(f"align_channels={align_channels!r}: use a channel multiple >= 1, or 0 to turn it off")
        self.align_channels = align_channels
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.used_ms = False
        self._names: set[str] = set(program.tensors) | {program.input, program.output}
        self._qp_cache: dict[str, tuple[str, str]] = {}
        self._const_cache: dict[tuple, str] = {}

    # -- names, constants, nodes --------------------------------------------------------------
    def fresh(self, base: str) -> str:
        base = base.replace("/", "_")
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def const(self, base: str, value, dtype=None, share: bool = True) -> str:
        """An initializer; small scalars/vectors with the same bytes are shared."""
        arr = np.asarray(value, dtype) if dtype is not None else np.asarray(value)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if share and arr.size <= 4096 else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str] | str | None = None, domain: str = "",
             name: str | None = None, **attrs) -> list[str]:
        if outputs is None:
            outputs = [self.fresh(f"{name or op}_out")]
        elif isinstance(outputs, str):
            outputs = [outputs]
        if domain == MS_DOMAIN:
            self.used_ms = True
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.fresh(name or op), domain=domain or None, **attrs))
        return outputs

    # -- integer activations ------------------------------------------------------------------
    def is_int(self, tensor: str) -> bool:
        return self.program.tensors[tensor].dtype in ("int8", "int16")

    def is_wide(self, tensor: str) -> bool:
        """A 16-bit (act16) tensor: stored as ONNX int16 with the program's own integers."""
        return self.program.tensors[tensor].dtype == "int16"

    def touches_wide(self, ins: Instr) -> bool:
        """Any int16 input or output: ONNX Runtime runs such a node as DQ -> float32 op -> Q."""
        return any(t in self.program.tensors and self.is_wide(t) for t in (*ins.inputs, ins.output))

    def in_f64(self, ins: Instr) -> bool:
        """The instruction's float op runs in float64 (16-bit, ``wide_ort.F64_OPS``; see ``kernels.wide_ort``:
        a float64 op rounded once to float32 gives the same float32 in every runtime). LayerNorm always:
        an 8-bit one in float32 flipped single LSBs against the interpreter (4 of 786,432 outputs on
        all-MiniLM-L6-v2's first LayerNorm), which six layers amplified to 50 output LSB."""
        return ins.op in F64_OPS and (self.touches_wide(ins) or ins.op == "layernorm")

    def to_compute(self, ins: Instr, x: str) -> str:
        """A float32 tensor in the instruction's compute type (float64 where ``in_f64``)."""
        return self.node("Cast", [x], name=f"{x}_f64", to=TensorProto.DOUBLE)[0] if self.in_f64(ins) else x

    def from_compute(self, ins: Instr, y: str) -> str:
        """The op's result back in float32 (QuantizeLinear takes float32)."""
        return self.node("Cast", [y], name=f"{y}_f32", to=TensorProto.FLOAT)[0] if self.in_f64(ins) else y

    def compute_const(self, ins: Instr, base: str, arr: np.ndarray) -> str:
        """A float parameter (bias, gamma, beta) in the instruction's compute type."""
        return self.const(base, np.asarray(arr, np.float64 if self.in_f64(ins) else np.float32), share=False)

    def type_of(self, tensor: str) -> ActType:
        """How an integer tensor is stored: int16 as is (no offset), int8 in the activation type."""
        return WIDE_TYPE if self.is_wide(tensor) else self.act

    def qparams(self, tensor: str) -> tuple[str, str]:
        """(scale, zero point) initializers of an integer tensor, in its ONNX type (``type_of``)."""
        if tensor not in self._qp_cache:
            qp = self.program.tensors[tensor].qparams
            if qp is None or np.ndim(qp.scale) != 0:
                raise ExportError(f"tensor {tensor!r} has no per-tensor activation qparams; cannot export it as a quantized activation")
            t = self.type_of(tensor)
            lo, hi = (-32768, 32767) if t is WIDE_TYPE else (-128, 127)
            if qp.qmin < lo or qp.qmax > hi:
                raise ExportError(f"tensor {tensor!r}: integer range [{qp.qmin}, {qp.qmax}] does not fit an {t.name} container")
            s = self.const(f"{tensor}_scale", np.float32(qp.scale))
            z = self.const(f"{tensor}_zp", int(qp.zero_point) + t.offset, t.np_dtype)
            self._qp_cache[tensor] = (s, z)
        return self._qp_cache[tensor]

    def encode(self, value: int, tensor: str | None = None) -> int:
        """A program integer value of ``tensor`` (default: an int8 tensor) in its ONNX type."""
        return int(value) + (self.type_of(tensor).offset if tensor is not None else self.act.offset)

    def dq(self, tensor: str, src: str | None = None) -> str:
        """A fresh DequantizeLinear of an integer tensor (one per consumer, as QDQ graphs expect);
        ``src``: an ONNX tensor holding ``tensor``'s integers in another shape (e.g. channel-padded)."""
        s, z = self.qparams(tensor)
        return self.node("DequantizeLinear", [src or tensor, s, z], name=f"{tensor}_dq")[0]

    def align_conv_input(self, ins: Instr, w: np.ndarray) -> tuple[str, np.ndarray]:
        """(input, weight) of a dense conv with input channels padded to a multiple of
        ``align_channels``: the input with its zero point, the weight with zeros, so every integer
        sum is unchanged. ONNX Runtime's x86 u8s8 conv kernels take 4 input channels per step; a
        3-channel RGB stem runs ~3x slower than the same conv padded to 4 (bench/speed.py)."""
        x, c, k = ins.inputs[0], w.shape[1], self.align_channels
        if k <= 1 or c % k == 0 or int(ins.attrs.get("groups", 1)) != 1 or not self.is_int(x) or self.is_wide(x):
            return x, w
        extra = -c % k
        pads = np.zeros(2 * w.ndim, np.int64)
        pads[w.ndim + 1] = extra  # end of the channel axis
        xp = self.node("Pad", [x, self.const("align_pads", pads), self.qparams(x)[1]], name=f"{ins.output}_align",
                       mode="constant")[0]
        return xp, np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1)

    def quantize_into(self, value: str, tensor: str, lo: int | None = None, hi: int | None = None,
                      out: str | None = None) -> str:
        """QuantizeLinear a float tensor with program tensor ``tensor``'s qparams into ONNX tensor
        ``out`` (default ``tensor``), clamped to the integers [lo, hi] (fused act, narrow range)."""
        qp = self.program.tensors[tensor].qparams
        lo = qp.qmin if lo is None else lo
        hi = qp.qmax if hi is None else hi
        out = out or tensor
        s, z = self.qparams(tensor)
        if self.is_wide(tensor):  # ONNX Runtime has no int16 Clip: clamp the real value (the same integers)
            if lo > qp.qmin or hi < qp.qmax:
                value = self.node("Clip", [value, self.const(f"{out}_lo_f", np.float32(qp.scale) * np.float32(lo - int(qp.zero_point))),
                                           self.const(f"{out}_hi_f", np.float32(qp.scale) * np.float32(hi - int(qp.zero_point)))],
                                  name=f"{out}_act")[0]
            return self.node("QuantizeLinear", [value, s, z], out, name=f"{out}_q")[0]
        if lo <= -128 and hi >= 127:
            return self.node("QuantizeLinear", [value, s, z], out, name=f"{out}_q")[0]
        raw = self.node("QuantizeLinear", [value, s, z], name=f"{out}_q")[0]
        return self.clip_int(raw, out, lo, hi)

    def clip_int(self, src: str, out: str, lo: int, hi: int) -> str:
        """Integer Clip in the activation type: the fused activation / narrow (sub-8-bit) range."""
        if self.is_wide(out):  # no int16 Clip in ONNX Runtime: clip the exact int32 widening
            wide = self.node("Cast", [src], name=f"{out}_i32", to=TensorProto.INT32)[0]
            c = self.node("Clip", [wide, self.const(f"{out}_lo", np.int32(lo)), self.const(f"{out}_hi", np.int32(hi))],
                          name=f"{out}_clip")[0]
            return self.node("Cast", [c], out, name=f"{out}_i16", to=TensorProto.INT16)[0]
        a = self.act
        lo_c = self.const(f"{out}_lo", self.encode(max(lo, -128)), a.np_dtype)
        hi_c = self.const(f"{out}_hi", self.encode(min(hi, 127)), a.np_dtype)
        return self.node("Clip", [src, lo_c, hi_c], out, name=f"{out}_clip")[0]

    def out_bounds(self, ins: Instr) -> tuple[int, int]:
        """The integer clamp of an instruction's output: container range narrowed by a fused act."""
        qp = self.program.tensors[ins.output].qparams
        return int(ins.attrs.get("act_min", qp.qmin)), int(ins.attrs.get("act_max", qp.qmax))

    # -- weights and biases -------------------------------------------------------------------
    def weight_int8(self, ins: Instr, w: np.ndarray | None = None) -> str:
        """The integer weight as an int8 tensor: an INT4 initializer + Cast for <= 4-bit weights."""
        w = ins.arrays["weight"] if w is None else w
        bits = int(ins.attrs.get("weight_bits", 8))
        if w.dtype != np.int8:
            raise ExportError(f"instruction {ins.op} '{ins.output}': integer weights must be int8 containers, got {w.dtype}")
        if self.int4_weights and bits <= 4:
            if w.size and (int(w.min()) < -8 or int(w.max()) > 7):
                raise ExportError(f"layer '{ins.node}': {bits}-bit weights hold values outside int4 [-8, 7]")
            name = self.fresh(f"{ins.output}_w_int4")
            t = onnx.TensorProto(name=name, data_type=TensorProto.INT4, dims=list(w.shape))
            t.raw_data = pack(w, 4, signed=True).tobytes()  # two per byte, low nibble first (ONNX INT4)
            self.inits.append(t)
            packed = name
            return self.node("Cast", [packed], name=f"{ins.output}_w_widen", to=TensorProto.INT8)[0]
        return self.const(f"{ins.output}_w", w, share=False)

    def weight_scale(self, ins: Instr) -> tuple[str, str, bool]:
        """(scale, int8 zero point, per_channel) of the weight along its output axis."""
        ws = np.asarray(ins.arrays["w_scale"], np.float32)
        per_channel = bool(ins.attrs.get("per_channel", True)) or not np.all(ws == ws[0])
        if per_channel:
            return (self.const(f"{ins.output}_w_scale", ws, share=False),
                    self.const(f"{ins.output}_w_zp", np.zeros(ws.shape, np.int8), share=False), True)
        return self.const(f"{ins.output}_w_scale", ws[0]), self.const("w_zp", np.int8(0)), False

    def dq_weight(self, ins: Instr, w: np.ndarray | None = None) -> str:
        s, z, pc = self.weight_scale(ins)
        attrs = {"axis": 0} if pc else {}
        return self.node("DequantizeLinear", [self.weight_int8(ins, w), s, z], name=f"{ins.output}_w_dq", **attrs)[0]

    def bias_scale(self, ins: Instr) -> np.ndarray:
        """int32 bias scale ``s_in * s_w[c]`` in float32, as the lowering computed it."""
        s_in = np.float32(self.program.tensors[ins.inputs[0]].qparams.scale)
        return (s_in * np.asarray(ins.arrays["w_scale"], np.float32)).astype(np.float32)

    def dq_bias(self, ins: Instr) -> str:
        b = self.const(f"{ins.output}_bias", np.asarray(ins.arrays["bias"], np.int32), share=False)
        s = self.const(f"{ins.output}_bias_scale", self.bias_scale(ins), share=False)
        return self.node("DequantizeLinear", [b, s], name=f"{ins.output}_bias_dq", axis=0)[0]

    # -- the model ------------------------------------------------------------------------------
    def model(self, doc: str, metadata: dict[str, str]) -> onnx.ModelProto:
        p = self.program
        ins = [helper.make_tensor_value_info(t, INPUT_TYPES[p.tensors[t].dtype], ["N", *p.tensors[t].shape[1:]])
               for t in p.inputs]  # dict batches: every keyword input, by name (token ids, masks: int64)
        out_shape = ["N", *p.tensors[p.output].shape[1:]]
        graph = helper.make_graph(
            self.nodes, "edgequant", ins, [helper.make_tensor_value_info(p.output, TensorProto.FLOAT, out_shape)], self.inits)
        opsets = [helper.make_opsetid("", OPSET)]
        if self.used_ms:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        m = helper.make_model(graph, opset_imports=opsets, producer_name="edgequant", doc_string=doc)
        m.ir_version = IR_VERSION
        for k, v in metadata.items():
            m.metadata_props.add(key=k, value=str(v))
        return m


# -- shared attribute helpers ------------------------------------------------------------------
def conv_attrs(ins: Instr) -> dict:
    """ONNX Conv attributes; Conv1d (stored as (O, C/g, 1, k) over (N, C, 1, L)) stays 1-D."""
    a = ins.attrs
    t, b, l, r = a["padding"]
    kh, kw = ins.arrays["weight"].shape[2:]
    if a.get("dims", 2) == 1:
        return {"kernel_shape": [kw], "strides": [a["stride"][1]], "pads": [l, r],
                "dilations": [a["dilation"][1]], "group": int(a["groups"])}
    return {"kernel_shape": [kh, kw], "strides": list(a["stride"]), "pads": [t, l, b, r],
            "dilations": list(a["dilation"]), "group": int(a["groups"])}


def conv_weight(ins: Instr, w: np.ndarray) -> np.ndarray:
    """Weight in ONNX layout: (O, C/g, kh, kw), or (O, C/g, k) for Conv1d."""
    return w[:, :, 0, :] if ins.attrs.get("dims", 2) == 1 else w


def pool_attrs(ins: Instr, with_extra: bool = True) -> dict:
    """MaxPool/AveragePool attributes. ceil_mode is written as explicit extra end padding
    (computed by the lowering from the captured shape), which avoids runtimes' ceil-mode quirks."""
    a = ins.attrs
    t, b, l, r = a["padding"]
    eb, er = a.get("extra", (0, 0)) if with_extra else (0, 0)
    out = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]), "pads": [t, l, b + eb, r + er]}
    if tuple(a.get("dilation", (1, 1))) != (1, 1):
        out["dilations"] = list(a["dilation"])
    return out


def onnx_pads(pads) -> list[int]:
    """((before, after) per dim) -> ONNX [b0, b1, ..., a0, a1, ...]."""
    return [int(p[0]) for p in pads] + [int(p[1]) for p in pads]


def float_param(b: OnnxBuilder, base: str, arr: np.ndarray) -> str:
    """A float parameter initializer; float16 arrays stay half size in the file and are widened by a Cast."""
    if arr.dtype == np.float16:
        h = b.const(f"{base}_fp16", arr, share=False)
        return b.node("Cast", [h], name=f"{base}_widen", to=TensorProto.FLOAT)[0]
    return b.const(base, arr.astype(np.float32), share=False)


# -- the emitter tables --------------------------------------------------------------------------
# Each emitter is ``fn(builder, instr) -> None`` writing the ONNX tensor named ``instr.output``.
# One table per export style: QDQ and QOperator differ only in the integer compute ops (conv, linear,
# add, cat, avgpool, mean); every other op is shared. The op modules fill the tables on import (the
# package ``__init__`` imports them all); registering an op twice for a style is an error, so the
# tables do not depend on import order.
Emitter = Callable[[OnnxBuilder, Instr], None]

STYLES: dict[str, dict[str, Emitter]] = {"qdq": {}, "qoperator": {}}
ALL = tuple(STYLES)


def rows(emit: Emitter) -> Emitter:
    """Linear emitter that also takes (N, ..., I) inputs: Reshape to (rows, I), emit, Reshape back."""
    def wrapped(b: OnnxBuilder, ins: Instr) -> None:
        x = ins.inputs[0]
        xi, yi = b.program.tensors[x], b.program.tensors[ins.output]
        if len(xi.shape) <= 2:
            emit(b, ins)
            return
        fx, fy = b.fresh(f"{x}_rows"), b.fresh(f"{ins.output}_rows")
        b.program.tensors[fx] = dataclasses.replace(xi, shape=(int(np.prod(xi.shape[:-1])), xi.shape[-1]))
        b.program.tensors[fy] = dataclasses.replace(yi, shape=(int(np.prod(yi.shape[:-1])), yi.shape[-1]))
        b.node("Reshape", [x, b.const("shape", np.array([-1, xi.shape[-1]], np.int64))], fx, name=f"{fx}_reshape")
        emit(b, dataclasses.replace(ins, inputs=[fx], output=fy))
        b.node("Reshape", [fy, b.const("shape", np.array([-1, *yi.shape[1:]], np.int64))], ins.output,
               name=f"{ins.output}_reshape")
    return wrapped


def register(op: str, styles: tuple[str, ...] = ALL, nd_rows: bool = False) -> Callable[[Emitter], Emitter]:
    """Decorator: put the emitter in ``STYLES[s][op]`` for each style ``s``. ``nd_rows`` (Linear ops)
    registers ``rows(fn)`` so the op also takes (N, ..., I) inputs; the module keeps the plain ``fn``."""
    def deco(fn: Emitter) -> Emitter:
        for s in styles:
            if op in STYLES[s]:
                raise RuntimeError(f"ONNX emitter for {op!r} ({s}) registered twice")
            STYLES[s][op] = rows(fn) if nd_rows else fn
        return fn

    return deco
