"""A small in-memory TFLite model (tensors, buffers, operators) serialized with the generated
flatbuffer code of the ``tflite`` package (schema v3), so no offsets are written by hand.

The emitters (``core.Emitter`` and the op modules) append tensors and operators here;
``serialize()`` writes the flatbuffer. Buffer 0 is the empty sentinel the schema requires; constant data is 16-byte aligned.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

from ...errors import ExportError

try:
    import flatbuffers
    import tflite  # noqa: F401  (generated schema code: tflite.Model, tflite.Tensor, ...)
except ImportError as e:  # pragma: no cover - exercised only without the optional extra
    raise ExportError("TFLite export needs the 'tflite' and 'flatbuffers' packages: pip install 'edgequant[tflite]'") from e

SCHEMA_VERSION = 3
TENSOR_TYPES = {"float32": 0, "float16": 1, "int32": 2, "int64": 4, "int16": 7, "int8": 9, "int4": 17}
PADDING = {"SAME": 0, "VALID": 1}
ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}

# builtin operator -> (code, options table, BuiltinOptions union tag)
OPS: dict[str, tuple[int, str | None, int]] = {
    "ADD": (0, "AddOptions", 11),
    "AVERAGE_POOL_2D": (1, "Pool2DOptions", 5),
    "CONCATENATION": (2, "ConcatenationOptions", 10),
    "CONV_2D": (3, "Conv2DOptions", 1),
    "DEPTHWISE_CONV_2D": (4, "DepthwiseConv2DOptions", 2),
    "DEQUANTIZE": (6, None, 0),
    "FULLY_CONNECTED": (9, "FullyConnectedOptions", 8),
    "MAX_POOL_2D": (17, "Pool2DOptions", 5),
    "RESHAPE": (22, "ReshapeOptions", 17),
    "PAD": (34, None, 0),
    "TRANSPOSE": (39, None, 0),
    "MEAN": (40, "ReducerOptions", 27),
    "MAXIMUM": (55, None, 0),
    "MINIMUM": (57, None, 0),
    "PADV2": (60, None, 0),
    "QUANTIZE": (114, None, 0),
}


# operators whose first schema version is not 1 (BROADCAST_TO starts at 2)
OP_VERSIONS: dict[str, int] = {"BROADCAST_TO": 2}


def _schema(name: str):
    """The generated module ``tflite.<name>`` (the package star-imports classes over module names)."""
    return importlib.import_module(f"tflite.{name}")


@dataclass
class Quant:
    """Affine quantization of one tensor: per tensor (one scale) or per channel along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0


@dataclass
class TensorDef:
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: int = 0
    quant: Quant | None = None
    dynamic_batch: bool = False
    variable: bool = False  # state the operator updates in place (LiteRT resets it to zero)


@dataclass
class OperatorDef:
    op: str
    inputs: list[int]  # -1: an optional input left out
    outputs: list[int]
    options: dict = field(default_factory=dict)  # field name (CamelCase, as in the schema) -> value
    intermediates: list[int] = field(default_factory=list)  # tensors carrying only quantization (LSTM)


def pack_int4(q: np.ndarray) -> bytes:
    """Signed 4-bit values two per byte, the first element in the low nibble (TFLite INT4 layout)."""
    flat = np.asarray(q, np.int64).reshape(-1)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ExportError(f"values in [{flat.min()}, {flat.max()}] do not fit INT4 [-8, 7]")
    nib = (flat & 0xF).astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


class ModelBuilder:
    """Tensors, constant buffers and operators of a one-subgraph TFLite model."""

    def __init__(self, description: str = "edgequant") -> None:
        self.description = description
        self.buffers: list[bytes] = [b""]
        self.tensors: list[TensorDef] = []
        self.operators: list[OperatorDef] = []
        self.opcodes: dict[str, int] = {}
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def tensor(self, name: str, shape, dtype: str, quant: Quant | None = None, dynamic_batch: bool = False) -> int:
        """Add an activation tensor; returns its index."""
        if dtype not in TENSOR_TYPES:
            raise ExportError(f"tensor {name!r}: dtype {dtype} has no TFLite type")
        self.tensors.append(TensorDef(self._unique(name), tuple(int(d) for d in shape), dtype, 0, quant, dynamic_batch))
        return len(self.tensors) - 1

    def const(self, name: str, array: np.ndarray, dtype: str | None = None, quant: Quant | None = None) -> int:
        """Add a constant tensor holding ``array`` (``dtype="int4"`` packs it two values per byte)."""
        array = np.asarray(array)
        dtype = dtype or array.dtype.name
        if dtype == "int4":
            data = pack_int4(array)
        else:
            data = np.ascontiguousarray(array.astype(np.dtype(dtype))).tobytes()
        self.buffers.append(data)
        idx = self.tensor(name, array.shape, dtype, quant)
        self.tensors[idx].buffer = len(self.buffers) - 1
        return idx

    def variable(self, name: str, shape, dtype: str, quant: Quant | None = None) -> int:
        """Add a variable tensor (an operator's persistent state, zero at allocation)."""
        idx = self.tensor(name, shape, dtype, quant)
        self.tensors[idx].variable = True
        return idx

    def op(self, op: str, inputs: list[int], outputs: list[int], intermediates: list[int] | None = None,
           **options) -> None:
        if op not in OPS:
            raise ExportError(f"internal: TFLite operator {op} is not in the builder's table")
        self.opcodes.setdefault(op, len(self.opcodes))
        self.operators.append(OperatorDef(op, list(inputs), list(outputs), options, list(intermediates or [])))

    # -- serialization ---------------------------------------------------------------------------------
    def serialize(self) -> bytes:
        b = flatbuffers.Builder(1 << 16)
        buffers = [self._buffer(b, data) for data in self.buffers]
        tensors = [self._tensor(b, t) for t in self.tensors]
        operators = [self._operator(b, o) for o in self.operators]
        codes = [self._opcode(b, name) for name in sorted(self.opcodes, key=self.opcodes.get)]
        SG = _schema("SubGraph")
        t_vec = self._offsets(b, tensors)
        o_vec = self._offsets(b, operators)
        in_vec = b.CreateNumpyVector(np.asarray(self.inputs, np.int32))
        out_vec = b.CreateNumpyVector(np.asarray(self.outputs, np.int32))
        name = b.CreateString("main")
        SG.Start(b)
        SG.AddTensors(b, t_vec)
        SG.AddInputs(b, in_vec)
        SG.AddOutputs(b, out_vec)
        SG.AddOperators(b, o_vec)
        SG.AddName(b, name)
        subgraph = SG.End(b)
        M = _schema("Model")
        codes_vec = self._offsets(b, codes)
        sg_vec = self._offsets(b, [subgraph])
        buf_vec = self._offsets(b, buffers)
        desc = b.CreateString(self.description)
        M.Start(b)
        M.AddVersion(b, SCHEMA_VERSION)
        M.AddOperatorCodes(b, codes_vec)
        M.AddSubgraphs(b, sg_vec)
        M.AddDescription(b, desc)
        M.AddBuffers(b, buf_vec)
        model = M.End(b)
        b.Finish(model, file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _offsets(b, offs: list[int]) -> int:
        b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    @staticmethod
    def _buffer(b, data: bytes) -> int:
        B = _schema("Buffer")
        vec = None
        if data:
            b.StartVector(1, len(data), 16)
            b.head = b.head - len(data)
            b.Bytes[b.head:b.head + len(data)] = data
            vec = b.EndVector()
        B.Start(b)
        if vec is not None:
            B.AddData(b, vec)
        return B.End(b)

    @staticmethod
    def _quant(b, q: Quant) -> int:
        Q = _schema("QuantizationParameters")
        scale = b.CreateNumpyVector(np.asarray(q.scale, np.float32).reshape(-1))
        zp = b.CreateNumpyVector(np.asarray(q.zero_point, np.int64).reshape(-1))
        Q.Start(b)
        Q.AddScale(b, scale)
        Q.AddZeroPoint(b, zp)
        Q.AddQuantizedDimension(b, int(q.axis))
        return Q.End(b)

    def _tensor(self, b, t: TensorDef) -> int:
        T = _schema("Tensor")
        shape = b.CreateNumpyVector(np.asarray(t.shape, np.int32))
        sig = None
        if t.dynamic_batch and t.shape:
            sig = b.CreateNumpyVector(np.asarray((-1,) + t.shape[1:], np.int32))
        name = b.CreateString(t.name)
        quant = self._quant(b, t.quant) if t.quant is not None else None
        T.Start(b)
        T.AddShape(b, shape)
        T.AddType(b, TENSOR_TYPES[t.dtype])
        T.AddBuffer(b, t.buffer)
        T.AddName(b, name)
        if quant is not None:
            T.AddQuantization(b, quant)
        if sig is not None:
            T.AddShapeSignature(b, sig)
        if t.variable:
            T.AddIsVariable(b, True)
        return T.End(b)

    def _operator(self, b, o: OperatorDef) -> int:
        code, table, tag = OPS[o.op]
        opts = None
        if table is not None:
            S = _schema(table)
            vectors = {k: b.CreateNumpyVector(np.asarray(v, np.int32)) for k, v in o.options.items()
                       if isinstance(v, (list, tuple))}
            S.Start(b)
            for k, v in o.options.items():
                getattr(S, "Add" + k)(b, vectors.get(k, v))
            opts = S.End(b)
        O = _schema("Operator")
        ins = b.CreateNumpyVector(np.asarray(o.inputs, np.int32))
        outs = b.CreateNumpyVector(np.asarray(o.outputs, np.int32))
        mids = b.CreateNumpyVector(np.asarray(o.intermediates, np.int32)) if o.intermediates else None
        O.Start(b)
        O.AddOpcodeIndex(b, self.opcodes[o.op])
        O.AddInputs(b, ins)
        O.AddOutputs(b, outs)
        if opts is not None:
            O.AddBuiltinOptionsType(b, tag)
            O.AddBuiltinOptions(b, opts)
        if mids is not None:
            O.AddIntermediates(b, mids)
        return O.End(b)

    @staticmethod
    def _opcode(b, name: str) -> int:
        C = _schema("OperatorCode")
        code = OPS[name][0]
        C.Start(b)
        C.AddDeprecatedBuiltinCode(b, min(code, 127))
        C.AddBuiltinCode(b, code)
        C.AddVersion(b, OP_VERSIONS.get(name, 1))
        return C.End(b)
