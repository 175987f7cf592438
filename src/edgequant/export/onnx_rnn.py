"""ONNX emitters for the recurrent layer-directions (``rnn``, ``rnn_dyn``, ``rnn_f``), unrolled over T.

ONNX's LSTM/GRU operators are float only, so the integer program is spelled step by step in
standard operators, exactly as the interpreter computes it in its ``rounding="onnxruntime"`` mode:

* sums: MatMulInteger (uint8/int8 activations x int8 weights, exact int32), int32 bias Add;
* requantization: Cast to float32, Mul by the float32 multiplier, Round (half to even), Clip --
  what ONNX Runtime does for every requantization, and what the interpreter's mode emulates;
* the 513-entry gate tables: Floor/Sub give the index and the 7-bit offset, Gather the two entries,
  and the interpolation ``(slope * offset + 64) >> 7`` is a Floor -- exact in float32 (|values| < 2^24);
* products of two Q0.15 values (cell update, GRU gates) in float64, where they are exact, with
  gemmlowp's RoundingDivideByPOT as ``sign(v) * floor(|v| / 2^e + 1/2)``.

So ONNX Runtime reproduces the interpreter bit for bit (tested). The input projection of all steps
is one MatMulInteger; the T steps are unrolled (T is the captured sequence length). ``rnn_dyn``
uses DynamicQuantizeLinear + MatMulInteger as ``linear_dyn``, float gates; ``rnn_f`` float MatMuls.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..kernels.rnn import multipliers
from ..kernels.rnn_lut import LUTS
from ..program import Instr
from .onnx_float import _float_param
from .onnx_graph import OnnxBuilder
from .onnx_qdq import Emitter

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE


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

    def clip(self, x: str, lo: float, hi: float, dtype=np.float32) -> str:
        return self.op("Clip", x, self.c(lo, dtype), self.c(hi, dtype))

    def requant(self, acc_f32: str, mult_f32: np.ndarray, zp: int, lo: int, hi: int) -> str:
        """round_half_even(acc * M) + zp, clamped: ONNX Runtime's requantization (float32)."""
        y = self.op("Round", self.op("Mul", acc_f32, self.c(mult_f32)))
        if zp:
            y = self.op("Add", y, self.c(float(zp)))
        return self.clip(y, lo, hi)

    def rdp(self, v64: str, e: int) -> str:
        """gemmlowp RoundingDivideByPOT on exact integers held in float64 (ties away from zero)."""
        if e == 0:
            return v64
        r = self.op("Floor", self.op("Add", self.op("Mul", self.op("Abs", v64), self.c(2.0**-e, np.float64)),
                                     self.c(0.5, np.float64)))
        return self.op("Mul", self.op("Sign", v64), r)

    def lut(self, v: str, offsets: np.ndarray | None, fn: str = "") -> str:
        """Interpolated table lookup of int16 values held in float32; ``offsets`` (per last-dim column,
        0 = sigmoid, 513 = tanh) picks the table when several gates are looked up at once."""
        table = self.b.const(f"{self.p}_luts", np.concatenate([LUTS["sigmoid"], LUTS["tanh"]]).astype(np.float32))
        hi = self.op("Floor", self.op("Mul", v, self.c(1.0 / 128)))  # v >> 7
        off = self.op("Sub", v, self.op("Mul", hi, self.c(128.0)))  # v & 0x7f
        base_off = 256.0 + (513.0 if fn == "tanh" else 0.0)
        idx = self.op("Add", hi, self.c(base_off))
        if offsets is not None:
            idx = self.op("Add", idx, self.c(offsets.astype(np.float32)))
        idx = self.cast(idx, TensorProto.INT64)
        base = self.op("Gather", table, idx)
        nxt = self.op("Gather", table, self.op("Add", idx, self.c(1, np.int64)))
        slope = self.op("Sub", nxt, base)
        delta = self.op("Floor", self.op("Mul", self.op("Add", self.op("Mul", slope, off), self.c(64.0)), self.c(1.0 / 128)))
        return self.op("Add", base, delta)

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
    act, off = b.act, float(b.act.offset)
    _, zx = b.qparams(x)
    zh = b.const(f"{s.p}_hzp", int(a["h_zero_point"]) + act.offset, act.np_dtype)
    acc = s.op("MatMulInteger", x, s.c(np.ascontiguousarray(w_ih.T), np.int8), zx)  # (N, T, G*H) int32
    acc = s.op("Add", acc, s.c(ar["bias"], np.int32))
    xp = s.requant(s.cast(acc, F32), m["x_f32"], 0, -32768, 32767)
    w_hh_t = s.c(np.ascontiguousarray(w_hh.T), np.int8)
    h = b.const(f"{s.p}_h0", (ar["h0"].astype(np.int16) + act.offset).astype(act.np_dtype).reshape(1, hid))
    state = s.c(ar["s0"].astype(np.float64).reshape(1, hid), np.float64)
    cf = int(a.get("cell_frac", 15))
    gates = np.zeros(4 * hid if cell == "lstm" else 2 * hid, np.float32)
    if cell == "lstm":
        gates[2 * hid:3 * hid] = 513.0  # g is a tanh, i/f/o sigmoids
    outs: dict[int, str] = {}
    for t in _order(ins, t_len):
        acc_h = s.op("MatMulInteger", h, w_hh_t, zh)
        if "bias_h" in ar:
            acc_h = s.op("Add", acc_h, s.c(ar["bias_h"], np.int32))
        hp = s.requant(s.cast(acc_h, F32), m["h_f32"], 0, -32768, 32767)
        px = s.step_at(xp, t)
        if cell == "lstm":
            act_g = s.lut(s.clip(s.op("Add", px, hp), -32768, 32767), gates)
            i, f, g, o = (s.cast(v, F64) for v in s.split(act_g, 4))
            state = s.clip(s.op("Add", s.rdp(s.op("Mul", f, state), 15), s.rdp(s.op("Mul", i, g), 30 - cf)),
                           -32768, 32767, np.float64)
            c312 = s.rdp(state, cf - 12) if cf > 12 else s.clip(s.op("Mul", state, s.c(2.0**(12 - cf), np.float64)),
                                                                  -32768, 32767, np.float64)
            tc = s.lut(s.cast(c312, F32), None, "tanh")
            prod = s.cast(s.op("Mul", o, s.cast(tc, F64)), F32)
            h_int = s.requant(prod, m["out_f32"], int(a["h_zero_point"]), -128, 127)
        else:
            px_rz, px_n = s.cols(px, 0, 2 * hid), s.cols(px, 2 * hid, 3 * hid)
            hp_rz, hp_n = s.cols(hp, 0, 2 * hid), s.cols(hp, 2 * hid, 3 * hid)
            r, z = (s.cast(v, F64) for v in s.split(s.lut(s.clip(s.op("Add", px_rz, hp_rz), -32768, 32767), gates), 2))
            npre = s.clip(s.op("Add", s.cast(px_n, F64), s.rdp(s.op("Mul", r, s.cast(hp_n, F64)), 15)), -32768, 32767,
                          np.float64)
            n64 = s.cast(s.lut(s.cast(npre, F32), None, "tanh"), F64)
            state = s.clip(s.op("Add", n64, s.rdp(s.op("Mul", z, s.op("Sub", state, n64)), 15)), -32768, 32767, np.float64)
            h_int = s.requant(s.cast(state, F32), m["out_f32"], int(a["h_zero_point"]), -128, 127)
        h = s.cast(s.op("Add", h_int, s.c(off)), act.elem_type) if off else s.cast(h_int, act.elem_type)
        if a.get("output") == "c":
            qo = b.program.tensors[ins.output].qparams
            y = s.requant(s.cast(state, F32), m["cell_f32"], int(qo.zero_point), int(qo.qmin), int(qo.qmax))
            outs[t] = s.cast(s.op("Add", y, s.c(off)), act.elem_type) if off else s.cast(y, act.elem_type)
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


def rnn_dyn(b: OnnxBuilder, ins: Instr) -> None:
    s = _Steps(b, ins)
    ar, hid = ins.arrays, int(ins.attrs["hidden"])
    w = ar["weight"]
    w_ih, w_hh = w[:, : w.shape[1] - hid], w[:, w.shape[1] - hid:]
    xp = _dyn_matmul(s, ins.inputs[0], w_ih, ar["w_scale_ih"], ar["b_ih"])
    _float_steps(b, ins, xp, lambda h: _dyn_matmul(s, h, w_hh, ar["w_scale_hh"], ar["b_hh"]))


def rnn_f(b: OnnxBuilder, ins: Instr) -> None:
    s = _Steps(b, ins)
    ar = ins.arrays
    w_ih_t = _float_param(b, f"{s.p}_w_ih", np.ascontiguousarray(ar["w_ih"].T))
    w_hh_t = _float_param(b, f"{s.p}_w_hh", np.ascontiguousarray(ar["w_hh"].T))
    b_ih, b_hh = _float_param(b, f"{s.p}_b_ih", ar["b_ih"]), _float_param(b, f"{s.p}_b_hh", ar["b_hh"])
    xp = s.op("Add", s.op("MatMul", ins.inputs[0], w_ih_t), b_ih)
    _float_steps(b, ins, xp, lambda h: s.op("Add", s.op("MatMul", h, w_hh_t), b_hh))


EMITTERS: dict[str, Emitter] = {"rnn": rnn, "rnn_dyn": rnn_dyn, "rnn_f": rnn_f}


def install(styles: dict[str, dict]) -> None:
    for table in styles.values():
        table.update(EMITTERS)
