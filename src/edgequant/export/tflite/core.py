"""The TFLite emitter's core: the ``Emitter`` state (where each tensor lives, in which layout),
layout helpers, and the emitter table the op modules fill.

Layout: edgequant tensors are NCHW, TFLite kernels NHWC; ``Emitter.where`` holds each tensor in the
layout(s) written so far and ``Emitter.get`` inserts a TRANSPOSE only where a consumer needs the
other one. ``EMITTERS[op]`` is ``fn(emitter, instr) -> None``; the op modules register into it
(``register``) and the package ``__init__`` imports them all. Registering an op twice is an error,
so the table does not depend on import order.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...errors import ExportError
from ...program import Instr, Program
from ...qmath import QParams
from .builder import ModelBuilder, Quant

LINEAR_FORMS = ("conv", "fully_connected")
NHWC = (0, 2, 3, 1)   # NCHW -> NHWC permutation
NCHW = (0, 3, 1, 2)   # NHWC -> NCHW
AXIS_TO_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}


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


class Emitter:
    """One export's state: the program, the model being built, and each tensor's layout(s)."""

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
        # an LSTM's state tensors have the batch in their shape: such a file has a fixed batch
        self.dynamic_batch = not any(ins.op == "rnn" for ins in program.instrs)
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
                             dynamic_batch=self.dynamic_batch)

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
        """Elementwise clamp as MAXIMUM/MINIMUM with scalar constants (exact on int8/int16: same qparams)."""
        q = self.quant(name) if int_dtype else None
        dt = self.dtype(name) if int_dtype else "float32"
        lo_inf = lo is None or lo == float("-inf")
        hi_inf = hi is None or hi == float("inf")
        steps = [(op, v) for op, v, skip in (("MAXIMUM", lo, lo_inf), ("MINIMUM", hi, hi_inf)) if not skip]
        if not steps:
            steps = [("MAXIMUM", np.iinfo(dt).min if int_dtype else -np.finfo(np.float32).max)]
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
        """PAD when ``value`` is real zero (TFLite pads int8/int16 with the output zero point, float
        with 0.0), else PADV2 with the value as a constant."""
        dt = self.dtype(like)
        integer = dt in ("int8", "int16")
        paddings = self.m.const(f"{name}/paddings", np.array(pads, np.int32))
        zero = int(self.p.tensors[like].qparams.zero_point) if integer else 0.0
        if value == zero:
            self.m.op("PAD", [src, paddings], [out])
            return
        val = self.m.const(f"{name}/value", np.array([value]), dt if integer else "float32", self.quant(like))
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


EMITTERS: dict[str, Callable[[Emitter, Instr], None]] = {}


def register(*ops: str) -> Callable:
    """Decorator: ``EMITTERS[op] = fn`` for each op."""
    def deco(fn: Callable) -> Callable:
        for op in ops:
            if op in EMITTERS:
                raise RuntimeError(f"TFLite emitter for {op!r} registered twice")
            EMITTERS[op] = fn
        return fn

    return deco


# -- helpers shared by the op modules ------------------------------------------------------------
def binary_form(e: Emitter, names: list[str]) -> str:
    """The layout both inputs of a binary op (or all of a concatenation) are read in."""
    if len(e.shape(names[0])) != 4:
        return "nchw"
    return "nhwc" if any("nhwc" in e.where[n] for n in names) else "nchw"


def finish_act(e: Emitter, ins: Instr, raw: int, out: int, clamp, int_dtype: bool) -> None:
    """Apply the clamp a fused activation could not express (``Emitter.fused_act``/``float_act``)."""
    if clamp is not None:
        e.clamp(raw, out, ins.output, clamp[0], clamp[1], int_dtype)


def cat(e: Emitter, ins: Instr) -> None:
    """CONCATENATION of the inputs (requantized to the output's qparams where they differ)."""
    form = binary_form(e, ins.inputs)
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
