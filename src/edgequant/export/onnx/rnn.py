"""ONNX emitters for the recurrent layer-directions (``rnn``, ``rnn_dyn``, ``rnn_f``), unrolled over T.

ONNX's LSTM/GRU operators are float only, so the integer program is spelled step by step in
standard operators, exactly as the interpreter computes it in its ``rounding="onnxruntime"`` mode:

* sums: MatMulInteger (uint8/int8 activations x int8 weights, exact int32), int32 bias Add;
* requantization: Cast to float32, Mul by the float32 multiplier, Round (half to even), Clip --
  what ONNX Runtime does for every requantization, and what the interpreter's mode emulates;
* the gate functions: the interpolated 513-entry tables, or (LSTMs in TFLite's arithmetic) gemmlowp's
  fixed-point sigmoid/tanh, are functions of the int16 input, so the file holds their values at all
  65536 inputs (int16) and a lookup is one Gather;
* products of two Q0.15 values (cell update, GRU gates) in int32, where they fit, with gemmlowp's
  RoundingDivideByPOT as ``(v + sign(v) 2^(e-1)) / 2^e`` (Div truncates toward zero).

So ONNX Runtime reproduces the interpreter bit for bit (tested). The input projection of all steps
is one MatMulInteger; the T steps are unrolled (T is the captured sequence length). ``rnn_dyn``
uses DynamicQuantizeLinear + MatMulInteger as ``linear_dyn``, float gates; ``rnn_f`` float MatMuls.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...kernels import fixedpoint16
from ...kernels.rnn import h_bounds, multipliers, tflite_lstm
from ...kernels.rnn_lut import LUTS, lut_lookup
from ...program import Instr
from .core import OnnxBuilder, float_param, register

F32 = TensorProto.FLOAT


I32 = TensorProto.INT32


class _Steps:
    """Small helpers over an OnnxBuilder for one instruction's unrolled graph."""

    def __init__(self, b: OnnxBuilder, ins: Instr) -> None:
        self.b, self.ins, self.p = b, ins, ins.output

    def op(self, kind: str, *inputs: str, **attrs) -> str:
        return self.b.node(kind, list(inputs), name=f"{self.p}_{kind}", **attrs)[0]

    def c(self, value, dtype=np.float32) -> str:
        return self.b.const(f"{self.p}_c", np.asarray(value, dtype))

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", x, to=to)

    def clip(self, x: str, lo, hi, dtype=np.int32) -> str:
        return self.op("Clip", x, self.c(lo, dtype), self.c(hi, dtype))

    def requant(self, acc: str, mult_f32: np.ndarray, zp: int, lo: int, hi: int) -> str:
        """int32 -> round_half_even(float32(acc) * M) + zp, clamped, as int32: ONNX Runtime's requantization."""
        y = self.op("Round", self.op("Mul", self.cast(acc, F32), self.c(mult_f32)))
        if zp:
            y = self.op("Add", y, self.c(float(zp)))
        return self.cast(self.clip(y, float(lo), float(hi), np.float32), I32)

    def rdp(self, v: str, e: int) -> str:
        """gemmlowp RoundingDivideByPOT of int32 ``v``: ``(v + sign(v) 2^(e-1)) / 2^e`` with Div's
        truncation toward zero (ties away from zero; no operand leaves int32 in this kernel)."""
        if e == 0:
            return v
        half = self.op("Mul", self.op("Sign", v), self.c(1 << (e - 1), np.int32))
        return self.op("Div", self.op("Add", v, half), self.c(1 << e, np.int32))

    def table(self) -> str:
        """sigmoid, tanh (and, in TFLite's arithmetic, tanh of the cell state at its scale) at every
        int16 input, one Gather per lookup; stored int16 and widened by a Cast that ONNX Runtime folds
        at load. One table per arithmetic (and cell scale), shared by the instructions using it."""
        v = np.arange(-32768, 32768, dtype=np.int64)
        if tflite_lstm(self.ins):
            bits = 15 - int(self.ins.attrs["cell_frac"])
            key = f"tflite{bits}"
            parts = [fixedpoint16.table("sigmoid"), fixedpoint16.table("tanh"), fixedpoint16.table("tanh", bits)]
        else:
            key, parts = "lut", [lut_lookup(v, LUTS["sigmoid"]), lut_lookup(v, LUTS["tanh"])]
        tables = self.b.__dict__.setdefault("_rnn_tables", {})
        if key not in tables:
            t16 = self.b.const(f"rnn_gate_tables_{key}", np.concatenate(parts).astype(np.int16), share=False)
            tables[key] = self.b.node("Cast", [t16], name=f"rnn_gate_tables_{key}_widen", to=I32)[0]
        return tables[key]

    def lut(self, v: str, offsets: np.ndarray | None = None, fn: str = "sigmoid") -> str:
        """Table lookup of int16 values held in int32; ``offsets`` (per column: 0 sigmoid, 65536 tanh)
        looks several gates up at once; ``fn="tanh_c"``: tanh of the cell state (TFLite arithmetic)."""
        base = 32768 + 65536 * {"sigmoid": 0, "tanh": 1, "tanh_c": 2}[fn]
        idx = self.op("Add", v, self.c(base + offsets if offsets is not None else base, np.int32))
        return self.op("Gather", self.table(), idx)

    def split(self, x: str, parts: int) -> list[str]:
        outs = [self.b.fresh(f"{self.p}_part") for _ in range(parts)]
        return self.b.node("Split", [x], outs, name=f"{self.p}_split", axis=1, num_outputs=parts)

    def cols(self, x: str, start: int, stop: int) -> str:
        return self.op("Slice", x, self.c([start], np.int64), self.c([stop], np.int64), self.c([1], np.int64))

    def step_at(self, seq: str, t: int) -> str:
        return self.op("Gather", seq, self.c(t, np.int64), axis=1)

    def stack(self, items: list[str], out: str) -> None:
        parts = [self.op("Unsqueeze", h, self.c([1], np.int64)) for h in items]
        self.b.node("Concat", parts, out, name=f"{self.p}_concat", axis=1)


def _order(ins: Instr, t_len: int) -> list[int]:
    return list(range(t_len - 1, -1, -1)) if ins.attrs["reverse"] else list(range(t_len))


@register("rnn")
def rnn(b: OnnxBuilder, ins: Instr) -> None:
    """The integer layer-direction (see the module docstring)."""
    s = _Steps(b, ins)
    a, ar = ins.attrs, ins.arrays
    cell, hid = a["cell"], int(a["hidden"])
    x = ins.inputs[0]
    t_len = int(b.program.tensors[x].shape[1])
    qx = b.program.tensors[x].qparams
    m = multipliers(ins, float(qx.scale))
    w = ar["weight"]
    w_ih, w_hh = w[:, : w.shape[1] - hid], w[:, w.shape[1] - hid:]
    act = b.act
    _, zx = b.qparams(x)
    zh_int = int(a["h_zero_point"])
    zh = b.const(f"{s.p}_hzp", zh_int + act.offset, act.np_dtype)
    acc = s.op("Add", s.op("MatMulInteger", x, s.c(np.ascontiguousarray(w_ih.T), np.int8), zx), s.c(ar["bias"], np.int32))
    xp = s.requant(acc, m["x_f32"], 0, -32768, 32767)  # (N, T, G*H) Q3.12
    w_hh_t = s.c(np.ascontiguousarray(w_hh.T), np.int8)
    h = b.const(f"{s.p}_h0", (ar["h0"].astype(np.int16) + act.offset).astype(act.np_dtype).reshape(1, hid))
    state = s.c(ar["s0"].reshape(1, hid), np.int32)
    cf = int(a.get("cell_frac", 15))
    offsets = np.zeros(4 * hid if cell == "lstm" else 2 * hid, np.int32)
    if cell == "lstm":
        offsets[2 * hid:3 * hid] = 65536  # g is a tanh; i, f, o are sigmoids

    def to_act(v: str) -> str:
        return s.cast(s.op("Add", v, s.c(act.offset, np.int32)) if act.offset else v, act.elem_type)

    tfl = tflite_lstm(ins)
    hp_lo, hp_hi = (-(2.0**31), 2.0**31 - 128) if tfl else (-32768, 32767)  # TFLite: no clamp before px + hp
    outs: dict[int, str] = {}
    for t in _order(ins, t_len):
        acc_h = s.op("MatMulInteger", h, w_hh_t, zh)
        if "bias_h" in ar:
            acc_h = s.op("Add", acc_h, s.c(ar["bias_h"], np.int32))
        hp = s.requant(acc_h, m["h_f32"], 0, hp_lo, hp_hi)
        px = s.step_at(xp, t)
        if cell == "lstm":
            i, f, g, o = s.split(s.lut(s.clip(s.op("Add", px, hp), -32768, 32767), offsets), 4)
            state = s.clip(s.op("Add", s.rdp(s.op("Mul", f, state), 15), s.rdp(s.op("Mul", i, g), 30 - cf)), -32768, 32767)
            if tfl:
                tc = s.lut(state, fn="tanh_c")
            else:
                c312 = s.rdp(state, cf - 12) if cf > 12 else s.clip(s.op("Mul", state, s.c(1 << (12 - cf), np.int32)),
                                                                     -32768, 32767)
                tc = s.lut(c312, fn="tanh")
            h_int = s.requant(s.op("Mul", o, tc), m["out_f32"], zh_int, *h_bounds(ins))
        else:
            r, z = s.split(s.lut(s.clip(s.op("Add", s.cols(px, 0, 2 * hid), s.cols(hp, 0, 2 * hid)), -32768, 32767)), 2)
            npre = s.clip(s.op("Add", s.cols(px, 2 * hid, 3 * hid), s.rdp(s.op("Mul", r, s.cols(hp, 2 * hid, 3 * hid)), 15)),
                          -32768, 32767)
            n_ = s.lut(npre, fn="tanh")
            state = s.clip(s.op("Add", n_, s.rdp(s.op("Mul", z, s.op("Sub", state, n_)), 15)), -32768, 32767)
            h_int = s.requant(state, m["out_f32"], zh_int, *h_bounds(ins))
        h = to_act(h_int)
        if a.get("output") == "c":
            qo = b.program.tensors[ins.output].qparams
            outs[t] = to_act(s.requant(state, m["cell_f32"], int(qo.zero_point), int(qo.qmin), int(qo.qmax)))
        else:
            outs[t] = h
    s.stack([outs[t] for t in range(t_len)], ins.output)


def _float_steps(b: OnnxBuilder, ins: Instr, xp: str, hproj) -> None:
    """Float gates over the unrolled steps; ``hproj(h) -> (N, G*H)`` float recurrent projection."""
    s = _Steps(b, ins)
    a, ar = ins.attrs, ins.arrays
    cell, hid = a["cell"], int(a["hidden"])
    t_len = int(b.program.tensors[ins.inputs[0]].shape[1])
    h = s.c(ar["h0"].astype(np.float32).reshape(1, hid))
    c = s.c(ar["c0"].astype(np.float32).reshape(1, hid))
    outs: dict[int, str] = {}
    for t in _order(ins, t_len):
        hp, px = hproj(h), s.step_at(xp, t)
        if cell == "lstm":
            i, f, g, o = s.split(s.op("Add", px, hp), 4)
            c = s.op("Add", s.op("Mul", s.op("Sigmoid", f), c), s.op("Mul", s.op("Sigmoid", i), s.op("Tanh", g)))
            h = s.op("Mul", s.op("Sigmoid", o), s.op("Tanh", c))
        else:
            xr, xz, xn = s.split(px, 3)
            hr, hz, hn = s.split(hp, 3)
            r, z = s.op("Sigmoid", s.op("Add", xr, hr)), s.op("Sigmoid", s.op("Add", xz, hz))
            n_ = s.op("Tanh", s.op("Add", xn, s.op("Mul", r, hn)))
            h = s.op("Add", n_, s.op("Mul", z, s.op("Sub", h, n_)))
        outs[t] = c if a.get("output") == "c" else h
    s.stack([outs[t] for t in range(t_len)], ins.output)


def _dyn_matmul(s: _Steps, v: str, w: np.ndarray, ws: np.ndarray, bias: np.ndarray) -> str:
    q, qs, qz = s.b.node("DynamicQuantizeLinear", [v], [s.b.fresh(f"{s.p}_q"), s.b.fresh(f"{s.p}_qs"), s.b.fresh(f"{s.p}_qz")])
    acc = s.cast(s.op("MatMulInteger", q, s.c(np.ascontiguousarray(w.T), np.int8), qz), F32)
    return s.op("Add", s.op("Mul", acc, s.op("Mul", qs, s.c(ws.astype(np.float32)))), s.c(bias.astype(np.float32)))


@register("rnn_dyn")
def rnn_dyn(b: OnnxBuilder, ins: Instr) -> None:
    s = _Steps(b, ins)
    ar, hid = ins.arrays, int(ins.attrs["hidden"])
    w = ar["weight"]
    w_ih, w_hh = w[:, : w.shape[1] - hid], w[:, w.shape[1] - hid:]
    xp = _dyn_matmul(s, ins.inputs[0], w_ih, ar["w_scale_ih"], ar["b_ih"])
    _float_steps(b, ins, xp, lambda h: _dyn_matmul(s, h, w_hh, ar["w_scale_hh"], ar["b_hh"]))


@register("rnn_f")
def rnn_f(b: OnnxBuilder, ins: Instr) -> None:
    s = _Steps(b, ins)
    ar = ins.arrays
    w_ih_t = float_param(b, f"{s.p}_w_ih", np.ascontiguousarray(ar["w_ih"].T))
    w_hh_t = float_param(b, f"{s.p}_w_hh", np.ascontiguousarray(ar["w_hh"].T))
    b_ih, b_hh = float_param(b, f"{s.p}_b_ih", ar["b_ih"]), float_param(b, f"{s.p}_b_hh", ar["b_hh"])
    xp = s.op("Add", s.op("MatMul", ins.inputs[0], w_ih_t), b_ih)
    _float_steps(b, ins, xp, lambda h: s.op("Add", s.op("MatMul", h, w_hh_t), b_hh))
