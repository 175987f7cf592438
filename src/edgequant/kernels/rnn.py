"""Recurrent layers (one LSTM/GRU layer-direction): ``rnn`` (integer), ``rnn_dyn``, ``rnn_f``.

``rnn`` follows TFLite's integer LSTM (8x8->16): int8 input x and hidden state h (the output
tensor's qparams), int8 weights per output channel or per tensor, and 16-bit internals on fixed grids:

* gate pre-activations: ``W_ih (x - zx) + bias`` and ``W_hh (h - zh)`` are two exact integer sums,
  each requantized to Q3.12 (int16, scale 2^-12) with its own per-channel multiplier
  ``s_in * s_w / 2^-12``, and added with int16 saturation;
* sigmoid/tanh: 513-entry interpolated tables, Q3.12 -> Q0.15 (``rnn_lut``; GRU, and LSTMs of
  artifacts saved before the TFLite arithmetic below);
* LSTM cell state c: int16 with a power-of-two scale 2^-cell_frac (``attrs["cell_frac"]``),
  ``c = sat16(rdp(f * c, 15) + rdp(i * g, 30 - cell_frac))``; ``h = o * tanh(c)`` requantized from
  Q0.30 to the output grid;
* GRU: ``n = tanh(x_n + rdp(r * h_n, 15))`` and the state kept in int16 Q0.15,
  ``h16 = n + rdp(z * (h16 - n), 15)``; its int8 image (the output) feeds the next step's matmul.

``rdp`` is gemmlowp's RoundingDivideByPOT (ties away from zero) in every rounding mode; the
requantizations use the mode's rounding (gemmlowp Q31 multiplier, or ONNX Runtime's float32
multiply + round half to even -- the exporter writes the same float32 multipliers). The multipliers
are derived from the stored scales at run time, not stored.

LSTM instructions lowered with ``attrs["tflite"]`` (every LSTM since the TFLite export) follow
LiteRT's UNIDIRECTIONAL_SEQUENCE_LSTM kernel (``lstm_eval.cc`` ``EvalInteger8x8_16``) to the bit, so
the exported ``.tflite`` computes what ``q.run`` computes:

* sigmoid/tanh are gemmlowp's int16 fixed-point functions (``fixedpoint16``), not the tables;
* tanh(c) reads the cell state at its own scale (``IntegerBits = 15 - cell_frac``, at most 6);
* the recurrent sum is requantized without an int16 clamp before it is added to the input part
  (``MatrixBatchVectorMultiplyAccumulate`` clamps the sum once);
* the multipliers are TFLite's float32 effective scales: ``(s_w * s_in) / 2^-12`` and
  ``2^-15 / s_h * 2^-15`` rounded to float32 (``PopulateQuantizedLstmParams8x8_16``).

``simulate`` is the float64 fake-quant twin: the same grids and clamps, exact sigmoid/tanh.
``rnn_dyn``: int8 weights, x quantized once over the whole (N, T, I) batch and h at every step
(range of the batch, as ``linear_dyn``), float gates. ``rnn_f``: float32 (fp16-stored) weights.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import qmath
from ..rnn_float import rnn_layer
from . import RUN, SIM, fixedpoint16, register
from .context import KernelContext
from .gemm import exact_matmul
from .rnn_lut import INT16_MAX, INT16_MIN, LUTS, lut_lookup

Q312 = 2.0**-12
Q015 = 2.0**-15


# -- constants derived from the stored scales --------------------------------------------------------
def h_bounds(instr) -> tuple[int, int]:
    """Integer range of the hidden state h (its activation width: [-128, 127] at 8 bits)."""
    return int(instr.attrs.get("h_qmin", -128)), int(instr.attrs.get("h_qmax", 127))


def tflite_lstm(instr) -> bool:
    """Whether the instruction is an LSTM in TFLite's arithmetic (see the module docstring)."""
    return instr.attrs["cell"] == "lstm" and bool(instr.attrs.get("tflite", False))


def _split(instr) -> tuple[np.ndarray, np.ndarray]:
    w = instr.arrays["weight"]
    i = w.shape[1] - int(instr.attrs["hidden"])
    return w[:, :i], w[:, i:]


def multipliers(instr, s_x: float) -> dict[str, np.ndarray]:
    """Real and float32 requantization multipliers: x-sum and h-sum to Q3.12, h's Q0.30 product (LSTM)
    or Q0.15 state (GRU) to the int8 hidden grid, and the cell state to the output grid (``output="c"``)."""
    s_h = float(np.float32(instr.attrs["h_scale"]))
    ws_i = np.asarray(instr.arrays["w_scale_ih"], np.float32)
    ws_h = np.asarray(instr.arrays["w_scale_hh"], np.float32)
    out = {"x": float(np.float32(s_x)) * ws_i.astype(np.float64) / Q312,
           "x_f32": (np.float32(s_x) * ws_i * np.float32(1.0 / Q312)).astype(np.float32),
           "h": s_h * ws_h.astype(np.float64) / Q312,
           "h_f32": (np.float32(s_h) * ws_h * np.float32(1.0 / Q312)).astype(np.float32)}
    frac = 30 if instr.attrs["cell"] == "lstm" else 15
    out["out"] = np.array([2.0**-frac / s_h])
    out["out_f32"] = np.array([np.float32(2.0**-frac) / np.float32(s_h)], np.float32)
    if tflite_lstm(instr):  # float32 effective scales, as LiteRT derives them from the file
        to_q312 = np.float32(1.0 / Q312)  # division by 2^-12 in float32: exact
        out["x_f32"] = (ws_i * np.float32(s_x)) * to_q312
        out["h_f32"] = (ws_h * np.float32(s_h)) * to_q312
        out["out_f32"] = np.array([np.float32(2.0**-15 / s_h * 2.0**-15)], np.float32)
        out.update(x=out["x_f32"].astype(np.float64), h=out["h_f32"].astype(np.float64),
                   out=out["out_f32"].astype(np.float64))
    if instr.attrs.get("output") == "c":
        s_o = float(np.float32(instr.attrs["out_scale"]))
        cf = int(instr.attrs["cell_frac"])
        out["cell"] = np.array([2.0**-cf / s_o])
        out["cell_f32"] = np.array([np.float32(2.0**-cf) / np.float32(s_o)], np.float32)
    return out


class _Requant:
    """One requantization (``qmath.requantize``), its Q31 multipliers computed once per call.

    Fast path (gemmlowp mode, multipliers < 1, |acc| < 2^22): the same integers in float64, where
    every step is exact -- ``acc * M0 < 2^53``, the nudge, the division by 2^31 and by 2^-shift are
    exact, and truncation / ties-away rounding of such values is exact -- at a fraction of the cost
    of the int64 spec (the interpreter spends most of an LSTM step here). Tested equal to the spec.
    """

    FAST_LIMIT = 1 << 22

    def __init__(self, real, real_f32, rounding: str) -> None:
        self.m0, self.shift = qmath.quantize_multiplier(real)
        self.real_f32, self.rounding = real_f32, rounding
        self.fast = rounding == "gemmlowp" and bool(np.all(self.shift <= 0))
        if self.fast:
            self.m0_f = self.m0.astype(np.float64)
            self.down = np.ldexp(1.0, self.shift.astype(np.int64))  # 2^-right, exact

    def __call__(self, acc, zp: int, lo: int, hi: int) -> np.ndarray:
        if self.fast and (np.size(acc) == 0 or int(np.abs(acc).max()) < self.FAST_LIMIT):
            ab = np.asarray(acc, np.float64) * self.m0_f
            high = np.trunc((ab + np.where(ab >= 0, 2.0**30, 1.0 - 2.0**30)) * 2.0**-31)  # SaturatingRoundingDoublingHighMul
            v = high * self.down  # RoundingDivideByPOT: ties away from zero
            r = np.copysign(np.floor(np.abs(v) + 0.5), v)
            return np.clip(r + zp, lo, hi).astype(np.int64)
        return qmath.requantize(acc, m0=self.m0, shift=self.shift, real_multiplier=self.real_f32, zero_point=zp,
                                qmin=lo, qmax=hi, rounding=self.rounding).astype(np.int64)


def _requant(acc, real, real_f32, zp: int, lo: int, hi: int, rounding: str) -> np.ndarray:
    return _Requant(real, real_f32, rounding)(acc, zp, lo, hi)


def _sat16(v: np.ndarray) -> np.ndarray:
    return np.clip(v, INT16_MIN, INT16_MAX)


def _to_q312(c: np.ndarray, cell_frac: int) -> np.ndarray:
    """Cell state on the 2^-cell_frac grid -> Q3.12 (saturating): the tanh table's input."""
    if cell_frac > 12:
        return qmath.rounding_divide_by_pot(c, cell_frac - 12)
    return _sat16(c * (1 << (12 - cell_frac)))


def _rdp(v, e: int) -> np.ndarray:
    return qmath.rounding_divide_by_pot(v, e)


# -- integer -------------------------------------------------------------------------------------------
@register("rnn", RUN)
def rnn_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    x = inputs[0]  # (N, T, I) int8
    a = instr.attrs
    cell, hid, rounding = a["cell"], int(a["hidden"]), ctx.rounding
    qx = ctx.qp(instr.inputs[0])
    zx, zh = int(qx.zero_point), int(a["h_zero_point"])
    h_lo, h_hi = h_bounds(instr)
    m = multipliers(instr, float(qx.scale))
    w_ih, w_hh = _split(instr)
    n, t_len, i_dim = x.shape
    # input projection of every step at once: (N*T, G*H) exact sums -> Q3.12
    acc = exact_matmul(x.reshape(-1, i_dim), np.ascontiguousarray(w_ih.T))
    acc = acc - zx * w_ih.astype(np.int64).sum(axis=1) + instr.arrays["bias"].astype(np.int64)
    xp = _requant(acc, m["x"], m["x_f32"], 0, INT16_MIN, INT16_MAX, rounding).reshape(n, t_len, -1)
    w_hh_t = np.ascontiguousarray(w_hh.T)
    w_hh_f = w_hh_t.astype(np.float32)
    w_hh_sum = w_hh.astype(np.int64).sum(axis=1)
    bias_h = instr.arrays.get("bias_h")
    h = np.broadcast_to(instr.arrays["h0"].astype(np.int64), (n, hid))
    state = np.broadcast_to(instr.arrays["s0"].astype(np.int64), (n, hid))  # c (LSTM) or h16 (GRU)
    sig, tanh = LUTS["sigmoid"], LUTS["tanh"]
    cf = int(a.get("cell_frac", 15))
    out = np.empty((n, t_len, hid), np.int8)
    tfl = tflite_lstm(instr)
    h_lo16, h_hi16 = (-(1 << 31), (1 << 31) - 1) if tfl else (INT16_MIN, INT16_MAX)  # TFLite clamps px + hp only
    rq_h, rq_out = _Requant(m["h"], m["h_f32"], rounding), _Requant(m["out"], m["out_f32"], rounding)
    rq_c = _Requant(m["cell"], m["cell_f32"], rounding) if a.get("output") == "c" else None
    steps = range(t_len - 1, -1, -1) if a["reverse"] else range(t_len)
    for t in steps:
        acc_h = exact_matmul(h.astype(np.int8), w_hh_t, w_hh_f) - zh * w_hh_sum
        if bias_h is not None:
            acc_h = acc_h + bias_h.astype(np.int64)
        hp = rq_h(acc_h, 0, h_lo16, h_hi16)  # (N, G*H) Q3.12
        px = xp[:, t]
        if tfl:
            pre = _sat16(px + hp)
            i, f = fixedpoint16.lookup(pre[:, :hid], "sigmoid"), fixedpoint16.lookup(pre[:, hid:2 * hid], "sigmoid")
            g = fixedpoint16.lookup(pre[:, 2 * hid:3 * hid], "tanh")
            o = fixedpoint16.lookup(pre[:, 3 * hid:], "sigmoid")
            state = _sat16(_rdp(f * state, 15) + _rdp(i * g, 30 - cf))
            h = rq_out(o * fixedpoint16.lookup(state, "tanh", 15 - cf), zh, h_lo, h_hi)
        elif cell == "lstm":
            pre = _sat16(px + hp)
            i, f = lut_lookup(pre[:, :hid], sig), lut_lookup(pre[:, hid:2 * hid], sig)
            g, o = lut_lookup(pre[:, 2 * hid:3 * hid], tanh), lut_lookup(pre[:, 3 * hid:], sig)
            state = _sat16(_rdp(f * state, 15) + _rdp(i * g, 30 - cf))
            tc = lut_lookup(_to_q312(state, cf), tanh)
            h = rq_out(o * tc, zh, h_lo, h_hi)
        else:
            r = lut_lookup(_sat16(px[:, :hid] + hp[:, :hid]), sig)
            z = lut_lookup(_sat16(px[:, hid:2 * hid] + hp[:, hid:2 * hid]), sig)
            nn_ = lut_lookup(_sat16(px[:, 2 * hid:] + _rdp(r * hp[:, 2 * hid:], 15)), tanh)
            state = _sat16(nn_ + _rdp(z * (state - nn_), 15))
            h = rq_out(state, zh, h_lo, h_hi)
        if a.get("output") == "c":
            qo = ctx.qp(instr.output)
            out[:, t] = rq_c(state, int(qo.zero_point), qo.qmin, qo.qmax)
        else:
            out[:, t] = h
    return out


def _fq(v: torch.Tensor, scale: float, zp: int, lo: int, hi: int, ctx: KernelContext) -> torch.Tensor:
    return qmath.fake_quantize(v, scale, zp, lo, hi, half_away=ctx.half_away)


@register("rnn", SIM)
def rnn_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    x = inputs[0]
    dt = x.dtype
    a = instr.attrs
    cell, hid = a["cell"], int(a["hidden"])
    qx = ctx.qp(instr.inputs[0])
    s_x, s_h, zh = float(qx.scale), float(a["h_scale"]), int(a["h_zero_point"])
    h_lo, h_hi = h_bounds(instr)
    w_ih, w_hh = _split(instr)
    ws_i = torch.as_tensor(instr.arrays["w_scale_ih"], dtype=dt)
    ws_h = torch.as_tensor(instr.arrays["w_scale_hh"], dtype=dt)
    wi = torch.as_tensor(w_ih, dtype=dt) * ws_i[:, None]
    wh = torch.as_tensor(w_hh, dtype=dt) * ws_h[:, None]
    bx = torch.as_tensor(instr.arrays["bias"], dtype=dt) * (s_x * ws_i)
    bh = torch.as_tensor(instr.arrays["bias_h"], dtype=dt) * (s_h * ws_h) if "bias_h" in instr.arrays else 0.0

    def q16(v, scale):
        return _fq(v, scale, 0, INT16_MIN, INT16_MAX, ctx)

    xp = q16(torch.matmul(x, wi.t()) + bx, Q312)
    n, t_len = x.shape[0], x.shape[1]
    h = (torch.as_tensor(instr.arrays["h0"], dtype=dt) - zh).mul(s_h).expand(n, hid)
    cf = int(a.get("cell_frac", 15))
    state = torch.as_tensor(instr.arrays["s0"], dtype=dt).mul(2.0**-(cf if cell == "lstm" else 15)).expand(n, hid)
    outs: list = [None] * t_len
    steps = range(t_len - 1, -1, -1) if a["reverse"] else range(t_len)
    for t in steps:
        hp = q16(torch.matmul(h, wh.t()) + bh, Q312)
        px = xp[:, t]
        if cell == "lstm":
            pre = q16(px + hp, Q312)
            i, f = q16(torch.sigmoid(pre[:, :hid]), Q015), q16(torch.sigmoid(pre[:, hid:2 * hid]), Q015)
            g, o = q16(torch.tanh(pre[:, 2 * hid:3 * hid]), Q015), q16(torch.sigmoid(pre[:, 3 * hid:]), Q015)
            state = q16(q16(f * state, 2.0**-cf) + q16(i * g, 2.0**-cf), 2.0**-cf)
            tc = q16(torch.tanh(state if tflite_lstm(instr) else q16(state, Q312)), Q015)
            h = _fq(o * tc, s_h, zh, h_lo, h_hi, ctx)
        else:
            r = q16(torch.sigmoid(q16(px[:, :hid] + hp[:, :hid], Q312)), Q015)
            z = q16(torch.sigmoid(q16(px[:, hid:2 * hid] + hp[:, hid:2 * hid], Q312)), Q015)
            nn_ = q16(torch.tanh(q16(px[:, 2 * hid:] + q16(r * hp[:, 2 * hid:], Q312), Q312)), Q015)
            state = q16(nn_ + q16(z * (state - nn_), Q015), Q015)
            h = _fq(state, s_h, zh, h_lo, h_hi, ctx)
        outs[t] = ctx.fq(state, instr.output) if a.get("output") == "c" else h
    return torch.stack(outs, dim=1)


# -- dynamic: int8 weights, activations quantized at run time, float gates ------------------------------
def _dyn_quant(v: np.ndarray, rounding: str) -> tuple[np.ndarray, int, np.float32]:
    """(int8 values, zero point, scale) of a float tensor with the range of the whole tensor."""
    from .conv import dynamic_qparams

    if rounding == "onnxruntime":  # ONNX DynamicQuantizeLinear (uint8), as exported
        from .onnx_ops import dynamic_quantize_linear

        qu8, s, z = dynamic_quantize_linear(v)
        return (qu8.astype(np.int16) - 128).astype(np.int8), int(z) - 128, np.float32(s)
    qp = dynamic_qparams(float(v.min()), float(v.max()))
    q = np.clip(qmath.round_half_away(v / np.float32(qp.scale)) + int(qp.zero_point), -128, 127).astype(np.int8)
    return q, int(qp.zero_point), np.float32(qp.scale)


def _dyn_gemm(v: np.ndarray, w_t: np.ndarray, w_sum: np.ndarray, ws: np.ndarray, b: np.ndarray, rounding: str) -> np.ndarray:
    q, z, s = _dyn_quant(v, rounding)
    acc = exact_matmul(q.reshape(-1, q.shape[-1]), w_t) - z * w_sum
    y = acc.astype(np.float32) * (s * ws).astype(np.float32) + b
    return y.reshape(v.shape[:-1] + (-1,)).astype(np.float32)


def _float_cell(cell: str, px: torch.Tensor, hp: torch.Tensor, h: torch.Tensor, c: torch.Tensor, hid: int):
    if cell == "lstm":
        i, f, g, o = (px + hp).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    r = torch.sigmoid(px[:, :hid] + hp[:, :hid])
    z = torch.sigmoid(px[:, hid:2 * hid] + hp[:, hid:2 * hid])
    nn_ = torch.tanh(px[:, 2 * hid:] + r * hp[:, 2 * hid:])
    return nn_ + z * (h - nn_), c


@register("rnn_dyn", RUN)
def rnn_dyn_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    x = np.asarray(inputs[0], np.float32)
    a = instr.attrs
    hid = int(a["hidden"])
    w_ih, w_hh = _split(instr)
    ar = instr.arrays
    px_all = torch.from_numpy(_dyn_gemm(x, np.ascontiguousarray(w_ih.T), w_ih.astype(np.int64).sum(axis=1),
                                        ar["w_scale_ih"], ar["b_ih"], ctx.rounding))
    w_hh_t, w_hh_sum = np.ascontiguousarray(w_hh.T), w_hh.astype(np.int64).sum(axis=1)
    n, t_len = x.shape[0], x.shape[1]
    h = torch.from_numpy(ar["h0"]).float().expand(n, hid)
    c = torch.from_numpy(ar["c0"]).float().expand(n, hid)
    out = np.empty((n, t_len, hid), np.float32)
    for t in (range(t_len - 1, -1, -1) if a["reverse"] else range(t_len)):
        hp = torch.from_numpy(_dyn_gemm(np.ascontiguousarray(h.numpy()), w_hh_t, w_hh_sum, ar["w_scale_hh"], ar["b_hh"],
                                        ctx.rounding))
        h, c = _float_cell(a["cell"], px_all[:, t], hp, h, c, hid)
        out[:, t] = (c if a.get("output") == "c" else h).numpy()
    return out


@register("rnn_dyn", SIM)
def rnn_dyn_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    from .conv import dynamic_qparams

    x = inputs[0]
    dt, a, ar = x.dtype, instr.attrs, instr.arrays
    hid = int(a["hidden"])
    w_ih, w_hh = _split(instr)
    wi = torch.as_tensor(w_ih, dtype=dt) * torch.as_tensor(ar["w_scale_ih"], dtype=dt)[:, None]
    wh = torch.as_tensor(w_hh, dtype=dt) * torch.as_tensor(ar["w_scale_hh"], dtype=dt)[:, None]

    def dq(v):
        qp = dynamic_qparams(float(v.min()), float(v.max()))
        return _fq(v, float(qp.scale), int(qp.zero_point), -128, 127, ctx)

    return rnn_layer(a["cell"], x, wi, wh, torch.as_tensor(ar["b_ih"], dtype=dt), torch.as_tensor(ar["b_hh"], dtype=dt),
                     torch.as_tensor(ar["h0"], dtype=dt), torch.as_tensor(ar["c0"], dtype=dt), a["reverse"],
                     a.get("output", "h"), quant=dq)


# -- float (fp32 / fp16 weights) -----------------------------------------------------------------------
def _float_args(instr, dt):
    ar = instr.arrays
    return [torch.as_tensor(ar[k].astype(np.float32), dtype=dt) for k in ("w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")]


@register("rnn_f", SIM)
def rnn_f_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    a = instr.attrs
    return rnn_layer(a["cell"], inputs[0], *_float_args(instr, inputs[0].dtype), a["reverse"], a.get("output", "h"))


@register("rnn_f", RUN)
def rnn_f_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    with torch.no_grad():
        return rnn_f_sim(instr, [torch.from_numpy(np.ascontiguousarray(inputs[0], np.float32))], ctx).numpy()

