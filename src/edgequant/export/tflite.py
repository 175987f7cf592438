"""The TFLite emitter: an integer (or fp32) Program -> a ``.tflite`` flatbuffer LiteRT runs.

Int8 programs follow the TFLite int8 quantization spec exactly as lowered: per-channel symmetric
int8 weights (zp 0), int32 bias with scale ``s_in * s_w``, asymmetric int8 activations. LiteRT
derives its fixed-point multipliers from the float32 scales in the file with the same
``QuantizeMultiplier`` the lowering uses, so its reference kernels (``BUILTIN_REF``) reproduce
``interpreter.run(..., rounding="gemmlowp")`` bit for bit.

Layout: edgequant tensors are NCHW, TFLite kernels NHWC. Each 4-D tensor is kept in whichever
layout its producer wrote and a TRANSPOSE is inserted only where a consumer needs the other one
(conv/pool/mean want NHWC; reshape/linear want edgequant's order). By default (``layout="nchw"``)
the file's float32 input and any 4-D output are NCHW, exactly what ``q.run`` takes and returns;
``layout="nhwc"`` makes them NHWC (no transposes at the edges). The batch dimension is dynamic
(shape signature -1; ``Interpreter.resize_tensor_input``), the stored shape uses ``batch_size``.

Emitters are a table keyed by instruction op; an instruction with no entry is an ``ExportError``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..program import Instr, Program
from ..qmath import QParams
from .tflite_builder import ACTIVATIONS, PADDING, ModelBuilder, Quant

OPTIONS = ("layout", "batch_size", "linear")
LINEAR_FORMS = ("conv", "fully_connected")
NHWC = (0, 2, 3, 1)   # NCHW -> NHWC permutation
NCHW = (0, 3, 1, 2)   # NHWC -> NCHW
AXIS_TO_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}


def _program(q) -> Program:
    return q if isinstance(q, Program) else q.program


def _tfl_round(x: float) -> int:
    """TfLiteRound: round half away from zero."""
    return int(np.sign(x) * np.floor(abs(x) + 0.5))


def tflite_act_range(act: str, qp: QParams) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the int8 clamp LiteRT derives from a fused activation."""
    s, z = np.float32(qp.scale), int(qp.zero_point)
    q = lambda v: z + _tfl_round(float(np.float32(v) / s))  # noqa: E731  float32 division, as TFLite
    lo, hi = {"NONE": (qp.qmin, qp.qmax), "RELU": (max(qp.qmin, q(0.0)), qp.qmax),
              "RELU6": (max(qp.qmin, q(0.0)), min(qp.qmax, q(6.0))),
              "RELU_N1_TO_1": (max(qp.qmin, q(-1.0)), min(qp.qmax, q(1.0)))}[act]
    return lo, hi


FLOAT_ACTS = {(0.0, float("inf")): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}


def same_pads(in_hw, kernel, stride, dilation) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """TFLite SAME padding (t, b, l, r) and output size for a window op."""
    pads, out = [], []
    for n, k, s, d in zip(in_hw, kernel, stride, dilation):
        o = -(-n // s)
        total = max((o - 1) * s + (k - 1) * d + 1 - n, 0)
        pads += [total // 2, total - total // 2]
        out.append(o)
    return (pads[0], pads[1], pads[2], pads[3]), (out[0], out[1])


class _Emitter:
    def __init__(self, program: Program, layout: str, batch_size: int, linear: str) -> None:
        if layout not in ("nchw", "nhwc"):
            raise ExportError(f"layout {layout!r} is not supported; use 'nchw' (edgequant's, the default) or 'nhwc'")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ExportError(f"batch_size must be a positive integer, got {batch_size!r}")
        if linear not in LINEAR_FORMS:
            raise ExportError(f"linear={linear!r} is not supported; use one of {LINEAR_FORMS}")
        self.p = program
        self.layout = layout
        self.linear = linear
        self.batch = batch_size
        recipe = program.meta.get("recipe", {}).get("name", "?")
        self.m = ModelBuilder(f"edgequant export, recipe {recipe}, input layout {layout.upper()}")
        # program tensor -> {"nchw"|"nhwc"|"plain": tflite tensor index}
        self.where: dict[str, dict[str, int]] = {}

    # -- tensors ------------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        return (self.batch,) + tuple(self.p.tensors[name].shape[1:])

    def quant(self, name: str) -> Quant | None:
        qp = self.p.tensors[name].qparams
        return None if qp is None else Quant(np.float32(qp.scale).reshape(1), np.int64(qp.zero_point).reshape(1))

    def dtype(self, name: str) -> str:
        return self.p.tensors[name].dtype

    def new(self, name: str, shape, like: str | None = None, dtype: str | None = None, quant: Quant | None = None) -> int:
        like = like or name
        return self.m.tensor(name, shape, dtype or self.dtype(like), quant if quant is not None else self.quant(like),
                             dynamic_batch=True)

    def define(self, name: str, form: str, shape=None) -> int:
        """The TFLite tensor for program tensor ``name`` in ``form`` (its producer writes it)."""
        shape = self.shape(name) if shape is None else shape
        if form == "nhwc":
            shape = tuple(shape[i] for i in NHWC)
        idx = self.new(name, shape)
        self.where[name] = {form: idx}
        return idx

    def get(self, name: str, form: str) -> int:
        """``name`` in ``form`` ("nhwc", or "nchw" = edgequant's order); TRANSPOSE once if needed."""
        have = self.where[name]
        if len(self.shape(name)) != 4:
            return next(iter(have.values()))
        if form in have:
            return have[form]
        src_form, src = next(iter(have.items()))
        perm = NHWC if form == "nhwc" else NCHW
        shape = self.shape(name)
        shape = tuple(shape[i] for i in NHWC) if form == "nhwc" else shape
        idx = self.new(f"{name}/{form}", shape, like=name)
        self.m.op("TRANSPOSE", [src, self.m.const(f"{name}/perm_{form}", np.array(perm, np.int32))], [idx])
        have[form] = idx
        return idx

    def form_of(self, name: str) -> str:
        return next(iter(self.where[name]))

    # -- shared pieces ---------------------------------------------------------------------------------
    def fused_act(self, ins: Instr) -> tuple[str, tuple[int, int] | None]:
        """Fused activation reproducing ``act_min/act_max`` and, if none does, the explicit clamp."""
        qp = self.p.tensors[ins.output].qparams
        want = (int(ins.attrs.get("act_min", qp.qmin)), int(ins.attrs.get("act_max", qp.qmax)))
        # the lowering folds a ReLU (act_min only) or ReLU6/clamp (both bounds) into act_min/act_max,
        # often equal to the output range; name it as TFLite's converter would when it is exact
        first = ("RELU6",) if "act_max" in ins.attrs else ("RELU",) if "act_min" in ins.attrs else ()
        for act in first + ("NONE", "RELU", "RELU6", "RELU_N1_TO_1"):
            if tflite_act_range(act, qp) == want:
                return act, None
        return "NONE", want

    def float_act(self, ins: Instr) -> tuple[str, tuple[float, float] | None]:
        act = ins.attrs.get("act")
        if act is None:
            return "NONE", None
        act = (float(act[0]), float(act[1]))
        return (FLOAT_ACTS[act], None) if act in FLOAT_ACTS else ("NONE", act)

    def clamp(self, src: int, out: int, name: str, lo, hi, int_dtype: bool) -> None:
        """Elementwise clamp as MAXIMUM/MINIMUM with scalar constants (exact on int8: same qparams)."""
        q = self.quant(name) if int_dtype else None
        dt = "int8" if int_dtype else "float32"
        lo_inf = lo is None or lo == float("-inf")
        hi_inf = hi is None or hi == float("inf")
        steps = [(op, v) for op, v, skip in (("MAXIMUM", lo, lo_inf), ("MINIMUM", hi, hi_inf)) if not skip]
        if not steps:
            steps = [("MAXIMUM", np.iinfo(np.int8).min if int_dtype else -np.finfo(np.float32).max)]
        cur = src
        for k, (op, v) in enumerate(steps):
            dst = out if k == len(steps) - 1 else self.new(f"{name}/{op.lower()}", self.m.tensors[out].shape, like=name)
            c = self.m.const(f"{name}/{op.lower()}_value", np.array([v]), dt, q)
            self.m.op(op, [cur, c], [dst])
            cur = dst

    def pad_op(self, src: int, name: str, like: str, shape_nhwc, pads_tblr, value) -> int:
        """Pad NHWC tensor ``src`` (program tensor ``like``) by (t, b, l, r) with ``value`` (raw,
        in the tensor's own domain); the padded tensor keeps ``like``'s qparams."""
        t, b, l, r = pads_tblr
        n, h, w, c = shape_nhwc
        out = self.new(f"{name}/pad", (n, h + t + b, w + l + r, c), like=like)
        self.pad(src, out, f"{name}/pad", like, [[0, 0], [t, b], [l, r], [0, 0]], value)
        return out

    def pad(self, src: int, out: int, name: str, like: str, pads, value) -> None:
        """PAD when ``value`` is real zero (TFLite pads int8 with the output zero point, float with
        0.0), else PADV2 with the value as a constant."""
        dt = self.dtype(like)
        paddings = self.m.const(f"{name}/paddings", np.array(pads, np.int32))
        zero = int(self.p.tensors[like].qparams.zero_point) if dt == "int8" else 0.0
        if value == zero:
            self.m.op("PAD", [src, paddings], [out])
            return
        val = self.m.const(f"{name}/value", np.array([value]), "int8" if dt == "int8" else "float32", self.quant(like))
        self.m.op("PADV2", [src, paddings, val], [out])

    def window_padding(self, ins: Instr, name_in: str, src: int, kernel, stride, dilation, pads, pad_value):
        """SAME when the program's padding is TFLite's SAME, VALID when none, else PADV2 + VALID."""
        n, c, h, w = self.shape(name_in)
        same, _ = same_pads((h, w), kernel, stride, dilation)
        if tuple(pads) == (0, 0, 0, 0):
            return "VALID", src
        if tuple(pads) == same:
            return "SAME", src
        return "VALID", self.pad_op(src, ins.output, name_in, (n, h, w, c), pads, pad_value)


# ---------------------------------------------------------------------------------------------------
# emitters, one per instruction op
def _quantize(e: _Emitter, ins: Instr) -> None:
    x = e.where[ins.inputs[0]]
    form = next(iter(x))
    shape = e.m.tensors[x[form]].shape
    out = e.new(ins.output, shape)
    e.where[ins.output] = {form: out}
    e.m.op("QUANTIZE", [x[form]], [out])


def _dequantize(e: _Emitter, ins: Instr) -> None:
    src = ins.inputs[0]
    form = "nhwc" if e.layout == "nhwc" else "nchw"
    x = e.get(src, form)
    out = e.new(ins.output, e.m.tensors[x].shape, dtype="float32", quant=None)
    e.where[ins.output] = {form: out}
    e.m.op("DEQUANTIZE", [x], [out])


def _weights(e: _Emitter, ins: Instr, w: np.ndarray, axis: int) -> int:
    """int8 per-channel weight tensor, zero points 0; <= 4-bit weights (binary and ternary too:
    their integers are -1/0/+1 with a per-channel scale) as packed INT4, which LiteRT's CONV_2D,
    DEPTHWISE_CONV_2D and FULLY_CONNECTED unpack to int8 before the same integer GEMM."""
    bits = int(ins.attrs.get("weight_bits", 8))
    scale = ins.arrays["w_scale"].astype(np.float32)
    dtype = "int4" if bits <= 4 else "int8"
    return e.m.const(f"{ins.output}/weight", w, dtype, Quant(scale, np.zeros(scale.size, np.int64), axis))


def _bias(e: _Emitter, ins: Instr) -> int:
    s_in = np.float32(e.p.tensors[ins.inputs[0]].qparams.scale)
    scale = (s_in * ins.arrays["w_scale"].astype(np.float32)).astype(np.float32)
    return e.m.const(f"{ins.output}/bias", ins.arrays["bias"].astype(np.int32), "int32",
                     Quant(scale, np.zeros(scale.size, np.int64), 0))


def _finish_act(e: _Emitter, ins: Instr, raw: int, out: int, clamp, int_dtype: bool) -> None:
    if clamp is not None:
        e.clamp(raw, out, ins.output, clamp[0], clamp[1], int_dtype)


def _conv(e: _Emitter, ins: Instr) -> None:
    a = ins.attrs
    if a.get("dims", 2) != 2:
        raise ExportError(f"layer '{ins.node}': 1-D convolution has no TFLite export yet (only 2-D CONV_2D)")
    integer = ins.op == "conv"
    name_in = ins.inputs[0]
    x = e.get(name_in, "nhwc")
    w = ins.arrays["weight"]
    o, cg, kh, kw = w.shape
    c_in = e.shape(name_in)[1]
    groups = int(a["groups"])
    kernel, stride, dil = (kh, kw), tuple(a["stride"]), tuple(a["dilation"])
    pad_value = int(e.p.tensors[name_in].qparams.zero_point) if integer else 0.0
    padding, x = e.window_padding(ins, name_in, x, kernel, stride, dil, a["padding"], pad_value)
    act, clamp = e.fused_act(ins) if integer else e.float_act(ins)
    depthwise = groups > 1 and groups == c_in and cg == 1
    if groups > 1 and not depthwise:
        raise ExportError(f"layer '{ins.node}': grouped convolution (groups={groups}, {c_in} input channels) has no "
                          "TFLite kernel; only groups=1 and depthwise (groups == input channels) export")
    if depthwise:
        wt = w.transpose(1, 2, 3, 0)  # (1, kh, kw, O)
        op, qaxis = "DEPTHWISE_CONV_2D", 3
        opts = dict(Padding=PADDING[padding], StrideW=stride[1], StrideH=stride[0], DepthMultiplier=o // c_in,
                    FusedActivationFunction=ACTIVATIONS[act], DilationWFactor=dil[1], DilationHFactor=dil[0])
    else:
        wt = w.transpose(0, 2, 3, 1)  # OHWI
        op, qaxis = "CONV_2D", 0
        opts = dict(Padding=PADDING[padding], StrideW=stride[1], StrideH=stride[0],
                    FusedActivationFunction=ACTIVATIONS[act], DilationWFactor=dil[1], DilationHFactor=dil[0])
    if integer:
        wi, bi = _weights(e, ins, wt, qaxis), _bias(e, ins)
    else:
        wi = e.m.const(f"{ins.output}/weight", wt.astype(np.float32))
        bi = e.m.const(f"{ins.output}/bias", ins.arrays["bias"].astype(np.float32))
    out = e.define(ins.output, "nhwc")
    raw = out if clamp is None else e.new(f"{ins.output}/preact", e.m.tensors[out].shape, like=ins.output)
    e.m.op(op, [x, wi, bi], [raw], **opts)
    _finish_act(e, ins, raw, out, clamp, integer)


def _linear(e: _Emitter, ins: Instr) -> None:
    integer = ins.op == "linear"
    name_in = ins.inputs[0]
    x = e.get(name_in, "nchw")
    act, clamp = e.fused_act(ins) if integer else e.float_act(ins)
    w = ins.arrays["weight"]
    o, i = w.shape
    as_conv = integer and e.linear == "conv"
    if integer:
        wi, bi = _weights(e, ins, w.reshape(o, 1, 1, i) if as_conv else w, 0), _bias(e, ins)
    else:
        wi = e.m.const(f"{ins.output}/weight", w.astype(np.float32))
        bi = e.m.const(f"{ins.output}/bias", ins.arrays["bias"].astype(np.float32))
    out = e.define(ins.output, "nchw")
    out_shape = e.m.tensors[out].shape
    raw = out if clamp is None else e.new(f"{ins.output}/preact", out_shape, like=ins.output)
    if as_conv:
        # LiteRT's FULLY_CONNECTED int8 kernel requantizes with a single rounding while CONV_2D (and
        # the interpreter) use gemmlowp's two; a 1x1 CONV_2D keeps the program's arithmetic exactly
        rows = int(np.prod(e.shape(name_in)[:-1]))
        x4 = e.new(f"{ins.output}/in4d", (rows, 1, 1, i), like=name_in)
        shp = e.m.const(f"{ins.output}/in4d_shape", np.array([-1, 1, 1, i], np.int32))
        e.m.op("RESHAPE", [x, shp], [x4], NewShape=[-1, 1, 1, i])
        y4 = e.new(f"{ins.output}/out4d", (rows, 1, 1, o), like=ins.output)
        e.m.op("CONV_2D", [x4, wi, bi], [y4], Padding=PADDING["VALID"], StrideW=1, StrideH=1,
               FusedActivationFunction=ACTIVATIONS[act], DilationWFactor=1, DilationHFactor=1)
        new_shape = [-1] + list(out_shape[1:])
        shp = e.m.const(f"{ins.output}/shape", np.array(new_shape, np.int32))
        e.m.op("RESHAPE", [y4, shp], [raw], NewShape=new_shape)
    else:
        e.m.op("FULLY_CONNECTED", [x, wi, bi], [raw], FusedActivationFunction=ACTIVATIONS[act],
               KeepNumDims=len(e.shape(name_in)) > 2)
    _finish_act(e, ins, raw, out, clamp, integer)


def _binary_form(e: _Emitter, names: list[str]) -> str:
    if len(e.shape(names[0])) != 4:
        return "nchw"
    return "nhwc" if any("nhwc" in e.where[n] for n in names) else "nchw"


def _add(e: _Emitter, ins: Instr) -> None:
    integer = ins.op == "add"
    form = _binary_form(e, ins.inputs)
    a, b = (e.get(n, form) for n in ins.inputs)
    act, clamp = e.fused_act(ins) if integer else e.float_act(ins)
    out = e.define(ins.output, form)
    raw = out if clamp is None else e.new(f"{ins.output}/preact", e.m.tensors[out].shape, like=ins.output)
    e.m.op("ADD", [a, b], [raw], FusedActivationFunction=ACTIVATIONS[act])
    _finish_act(e, ins, raw, out, clamp, integer)


def _cat(e: _Emitter, ins: Instr) -> None:
    form = _binary_form(e, ins.inputs)
    axis = int(ins.attrs["axis"]) % len(e.shape(ins.output))
    if form == "nhwc":
        axis = AXIS_TO_NHWC[axis]
    srcs = []
    for k, n in enumerate(ins.inputs):
        x = e.get(n, form)
        if ins.op == "cat" and not ins.attrs["same"][k]:
            # TFLite's int8 CONCATENATION needs equal qparams: requantize first (QUANTIZE int8 -> int8,
            # the same M0/shift as the program's cat)
            r = e.new(f"{ins.output}/requant{k}", e.m.tensors[x].shape, like=ins.output)
            e.m.op("QUANTIZE", [x], [r])
            x = r
        srcs.append(x)
    out = e.define(ins.output, form)
    e.m.op("CONCATENATION", srcs, [out], Axis=axis, FusedActivationFunction=0)


def _clamp(e: _Emitter, ins: Instr) -> None:
    src = ins.inputs[0]
    form = e.form_of(src)
    x = e.where[src][form]
    out = e.define(ins.output, form)
    e.clamp(x, out, ins.output, ins.attrs["lo"], ins.attrs["hi"], e.dtype(src) == "int8")


def _pool(e: _Emitter, ins: Instr) -> None:
    a = ins.attrs
    name_in = ins.inputs[0]
    if tuple(a.get("dilation", (1, 1))) != (1, 1):
        raise ExportError(f"layer '{ins.node}': TFLite pooling has no dilation (got {tuple(a['dilation'])})")
    if len(e.shape(name_in)) != 4:
        raise ExportError(f"layer '{ins.node}': only 2-D pooling exports to TFLite")
    x = e.get(name_in, "nhwc")
    kernel, stride = tuple(a["kernel"]), tuple(a["stride"])
    t, b, l, r = a["padding"]
    eb, er = a.get("extra", (0, 0))
    n, c, h, w = e.shape(name_in)
    same, _ = same_pads((h, w), kernel, stride, (1, 1))
    integer = e.dtype(name_in) == "int8"
    if ins.op == "maxpool":
        # padded and ceil-mode positions never win a max: TFLite SAME (which skips them) or an
        # explicit pad with the lowest value are both exact
        pads = (t, b + eb, l, r + er)
        if pads == (0, 0, 0, 0) or pads == same:
            padding = "VALID" if pads == (0, 0, 0, 0) else "SAME"
        else:
            low = -128 if integer else -np.finfo(np.float32).max
            padding, x = "VALID", e.pad_op(x, ins.output, name_in, (n, h, w, c), pads, low)
        op = "MAX_POOL_2D"
    else:
        # TFLite averages over the window positions inside the input (SAME skips padding); with
        # count_include_pad the padding holds real zero (the zero point) and is counted
        include = bool(a["count_include_pad"])
        if (t, b, l, r) == (0, 0, 0, 0) and (eb, er) == (0, 0):
            padding = "VALID"
        elif not include and (t, b + eb, l, r + er) == same:
            padding = "SAME"
        elif include and (eb, er) == (0, 0):
            zp = int(e.p.tensors[name_in].qparams.zero_point) if integer else 0.0
            padding, x = "VALID", e.pad_op(x, ins.output, name_in, (n, h, w, c), (t, b, l, r), zp)
        else:
            raise ExportError(f"layer '{ins.node}': average pooling with padding {tuple(a['padding'])}, ceil_mode "
                              f"extra {tuple(a.get('extra', (0, 0)))} and count_include_pad={include} has no exact "
                              "TFLite equivalent (TFLite pads SAME and skips padded positions)")
        op = "AVERAGE_POOL_2D"
    out = e.define(ins.output, "nhwc")
    e.m.op(op, [x], [out], Padding=PADDING[padding], StrideW=stride[1], StrideH=stride[0], FilterWidth=kernel[1],
           FilterHeight=kernel[0], FusedActivationFunction=0)


def _mean(e: _Emitter, ins: Instr) -> None:
    name_in = ins.inputs[0]
    if len(e.shape(name_in)) != 4:
        raise ExportError(f"layer '{ins.node}': only the 2-D global mean (N, C, H, W) exports to TFLite")
    x = e.get(name_in, "nhwc")
    n, c = e.shape(name_in)[:2]
    axes = e.m.const(f"{ins.output}/axes", np.array([1, 2], np.int32))
    # keep_dims=True selects LiteRT's integer Mean kernel (requantize the sum, then divide by the
    # count, which the interpreter's gemmlowp mean mirrors); other forms take a float path
    keep = bool(ins.attrs.get("keepdim", True))
    out4 = e.define(ins.output, "nhwc", shape=(n, c, 1, 1)) if keep else \
        e.new(f"{ins.output}/4d", (n, 1, 1, c), like=ins.output)
    e.m.op("MEAN", [x, axes], [out4], KeepDims=True)
    if not keep:
        out = e.define(ins.output, "nchw")
        shape = e.m.const(f"{ins.output}/shape", np.array([-1, c], np.int32))
        e.m.op("RESHAPE", [out4, shape], [out], NewShape=[-1, c])


def _reshape(e: _Emitter, ins: Instr) -> None:
    name_in = ins.inputs[0]
    shp = e.shape(name_in)
    # NHWC and NCHW hold the same bytes when H = W = 1: no transpose needed then
    form = e.form_of(name_in)
    if len(shp) == 4 and form == "nhwc" and shp[2] * shp[3] != 1:
        form = "nchw"
    x = e.get(name_in, form) if len(shp) == 4 else e.where[name_in][form]
    new_shape = [-1] + [int(d) for d in ins.attrs["shape"]]
    out = e.define(ins.output, "nchw")
    e.m.op("RESHAPE", [x, e.m.const(f"{ins.output}/shape", np.array(new_shape, np.int32))], [out], NewShape=new_shape)


def _pad(e: _Emitter, ins: Instr) -> None:
    name_in = ins.inputs[0]
    form = e.form_of(name_in)
    x = e.where[name_in][form]
    pads = [tuple(int(v) for v in p) for p in ins.attrs["pads"]]
    if form == "nhwc":
        pads = [pads[i] for i in NHWC]
    out = e.define(ins.output, form)
    e.pad(x, out, ins.output, name_in, pads, ins.attrs["value"])


EMITTERS = {
    "quantize": _quantize, "dequantize": _dequantize, "conv": _conv, "linear": _linear, "add": _add, "cat": _cat,
    "clamp": _clamp, "maxpool": _pool, "avgpool": _pool, "mean": _mean, "reshape": _reshape, "pad": _pad,
    # the fp32 program (the float baseline LiteRT runs for latency comparisons)
    "conv_f": _conv, "linear_f": _linear, "add_f": _add, "cat_f": _cat, "avgpool_f": _pool, "mean_f": _mean,
}


def _check_recipe(program: Program) -> None:
    recipe = program.meta.get("recipe", {})
    mode, name = recipe.get("mode"), recipe.get("name", "?")
    rnn = next((ins for ins in program.instrs if ins.op in ("rnn", "rnn_dyn", "rnn_f")), None)
    if rnn is not None:  # issue 17: UNIDIRECTIONAL_SEQUENCE_LSTM / GRU emitters are not written yet
        raise ExportError(f"layer '{rnn.node}' is a recurrent {rnn.attrs['cell'].upper()}, which edgequant does not export "
                          "to TFLite yet (no UNIDIRECTIONAL_SEQUENCE_LSTM emitter); export it to ONNX (q.export('m.onnx'), "
                          "bit-exact with the interpreter in ONNX Runtime) or run it with the interpreter (q.run)")
    if mode in ("dynamic", "fp16"):
        raise ExportError(f"recipe {name!r} ({mode}) cannot target TFLite with bit-exact semantics; export a static "
                          "integer recipe (e.g. 'w8a8-pc') or 'fp32'")
    for t, info in program.tensors.items():
        qp = info.qparams
        if info.dtype == "int8" and qp is not None and (qp.bits != 8 or qp.qmin != -128 or qp.qmax != 127):
            raise ExportError(f"recipe {name!r} cannot target TFLite: tensor '{t}' is a {qp.bits}-bit activation "
                              f"(range [{qp.qmin}, {qp.qmax}]) and LiteRT's int8 kernels saturate to [-128, 127]; "
                              "use 8-bit activations (e.g. 'w4a8' or 'w8a8-pc')")


def to_tflite(q, layout: str = "nchw", batch_size: int = 1, linear: str = "conv") -> bytes:
    """The ``.tflite`` flatbuffer bytes of a QuantizedModel (or Program); see the module docstring."""
    program = _program(q)
    _check_recipe(program)
    e = _Emitter(program, layout, batch_size, linear)
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
    return e.m.serialize()


def export_tflite(q, path, **options) -> Path:
    """Write ``q`` as a ``.tflite`` file (options: ``layout``, ``batch_size``); returns the path."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ExportError(f"unknown TFLite export option(s) {unknown}; known: {', '.join(OPTIONS)}")
    data = to_tflite(q, **options)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as e:
        raise ExportError(f"cannot write TFLite file {path}: {e}") from e
    return path


__all__ = ["to_tflite", "export_tflite", "EMITTERS", "tflite_act_range"]
from . import tflite_shape  # noqa: E402,F401  (slice, upsample, const, mul emitters)
from . import tflite_lut  # noqa: E402,F401  (lookup tables as GATHER)
