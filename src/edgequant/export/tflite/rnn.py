"""TFLite emitter for the integer LSTM layer-direction (``rnn``): UNIDIRECTIONAL_SEQUENCE_LSTM, 8x8->16.

An LSTM lowered in TFLite's arithmetic (``kernels.rnn``, ``attrs["tflite"]``) is exactly LiteRT's
integer LSTM (``lstm_eval.cc`` ``EvalInteger8x8_16``), so it maps to one operator: int8 input and
output (the hidden state's qparams), eight int8 gate matrices with one scale each (i, f, g, o rows of
``W_ih`` and ``W_hh``), four int32 gate biases (``b_ih + b_hh`` on the ``s_x * s_w`` grid), the state
as two variable tensors (int8 h, int16 c on 2^-cell_frac), no peephole, projection or layer norm, and
the 5 intermediates LiteRT reads scales from (four Q3.12 gates, the hidden state). ``time_major`` is
false (edgequant's sequences are batch-first); a reverse direction is REVERSE_V2 on the time axis
before and after. A bidirectional or stacked LSTM is these operators chained by the program's own
CONCATENATION/slices.

Not expressible, refused naming the layer: a GRU (no TFLite builtin), per-channel gate weights,
given initial states (LiteRT resets the variable state tensors to zero), the cell state c_n as an
output, and LSTMs from artifacts quantized before the TFLite arithmetic. Registered into
``core.EMITTERS``.
"""
from __future__ import annotations

import numpy as np

from ...errors import ExportError
from ...kernels.rnn import tflite_lstm
from ...program import Instr
from .builder import OPS, OP_VERSIONS, Quant
from .core import Emitter, register

OPS.update({"UNIDIRECTIONAL_SEQUENCE_LSTM": (44, "UnidirectionalSequenceLSTMOptions", 71),
            "REVERSE_V2": (105, "ReverseV2Options", 81)})
OP_VERSIONS["REVERSE_V2"] = 3  # int8
TANH = 4  # ActivationFunctionType


def _gate_scales(ins: Instr, key: str) -> np.ndarray:
    """One scale per gate matrix (i, f, g, o), or an ExportError if a gate has several."""
    hid = int(ins.attrs["hidden"])
    s = np.broadcast_to(np.asarray(ins.arrays[key], np.float32).reshape(-1), (4 * hid,)).reshape(4, hid)
    if not np.all(s == s[:, :1]):
        raise ExportError(f"layer '{ins.node}': its LSTM weights are quantized per output channel, but TFLite's integer "
                          "LSTM takes one scale per gate matrix; quantize with a per-tensor recipe (e.g. 'w8a8') to "
                          "export it to TFLite, or export this one to ONNX")
    return s[:, 0].copy()


def check(ins: Instr) -> None:
    """Refuse what UNIDIRECTIONAL_SEQUENCE_LSTM cannot compute exactly (see the module docstring)."""
    a, ar, name = ins.attrs, ins.arrays, ins.node
    if a["cell"] != "lstm":
        raise ExportError(f"layer '{name}' is a GRU: TFLite has no GRU operator (its recurrent builtin is "
                          "UNIDIRECTIONAL_SEQUENCE_LSTM); export the model to ONNX (q.export('m.onnx'), bit-exact with "
                          "the interpreter in ONNX Runtime) or run it with the interpreter (q.run)")
    if not tflite_lstm(ins):
        raise ExportError(f"layer '{name}' is an LSTM quantized with edgequant's earlier gate tables, not TFLite's "
                          "integer-LSTM arithmetic; quantize the model again with this version to export it to TFLite")
    if a.get("output") == "c":
        raise ExportError(f"layer '{name}': the model reads the LSTM's cell state (c_n), which TFLite's "
                          "UNIDIRECTIONAL_SEQUENCE_LSTM does not output; export it to ONNX")
    if np.any(ar["h0"].astype(np.int64) != int(a["h_zero_point"])) or np.any(ar["s0"] != 0):
        raise ExportError(f"layer '{name}' starts from given initial states h0/c0; TFLite's LSTM keeps its state in "
                          "variable tensors that LiteRT resets to zero; export it to ONNX, or start from zero states")
    for key in ("w_scale_ih", "w_scale_hh"):
        _gate_scales(ins, key)


def _reverse(e: Emitter, src: int, dst: int, name: str) -> None:
    """REVERSE_V2 along the time axis (1) of a batch-first sequence."""
    e.m.op("REVERSE_V2", [src, e.m.const(f"{name}/time_axis", np.array([1], np.int32))], [dst])


@register("rnn")
def _rnn(e: Emitter, ins: Instr) -> None:
    check(ins)
    a, ar, p = ins.attrs, ins.arrays, ins.output
    hid, cf = int(a["hidden"]), int(a["cell_frac"])
    x_name = ins.inputs[0]
    s_x, s_h, zh = np.float32(e.p.tensors[x_name].qparams.scale), np.float32(a["h_scale"]), int(a["h_zero_point"])
    x = e.get(x_name, "nchw")
    if a["reverse"]:
        x_rev = e.new(f"{p}/reversed_input", e.m.tensors[x].shape, like=x_name)
        _reverse(e, x, x_rev, f"{p}/input")
        x = x_rev
    w = ar["weight"]
    w_ih, w_hh = w[:, : w.shape[1] - hid], w[:, w.shape[1] - hid:]
    si, sh = _gate_scales(ins, "w_scale_ih"), _gate_scales(ins, "w_scale_hh")

    def per_tensor(scale) -> Quant:
        return Quant(np.float32(scale).reshape(1), np.zeros(1, np.int64))

    gates = "ifgo"
    w_in = [e.m.const(f"{p}/input_to_{g}", w_ih[k * hid:(k + 1) * hid], "int8", per_tensor(si[k])) for k, g in enumerate(gates)]
    w_rec = [e.m.const(f"{p}/recurrent_to_{g}", w_hh[k * hid:(k + 1) * hid], "int8", per_tensor(sh[k]))
             for k, g in enumerate(gates)]
    bias = [e.m.const(f"{p}/{g}_bias", ar["bias"][k * hid:(k + 1) * hid].astype(np.int32), "int32",
                      per_tensor(np.float32(s_x * si[k]))) for k, g in enumerate(gates)]
    h_quant = Quant(np.array([s_h], np.float32), np.array([zh], np.int64))
    h_state = e.m.variable(f"{p}/h_state", (e.batch, hid), "int8", h_quant)
    c_state = e.m.variable(f"{p}/c_state", (e.batch, hid), "int16", per_tensor(2.0**-cf))
    none = -1  # optional inputs left out: peephole (9-11), projection (16-17), layer norm (20-23)
    inputs = [x, *w_in, *w_rec, none, none, none, *bias, none, none, h_state, c_state, none, none, none, none]
    mids = [e.m.tensor(f"{p}/{g}_gate", (e.batch, hid), "int16", per_tensor(2.0**-12)) for g in gates]
    mids.append(e.m.tensor(f"{p}/hidden", (e.batch, hid), "int8", h_quant))
    out = e.define(p, "nchw")
    seq = e.new(f"{p}/reversed_output", e.m.tensors[out].shape, like=p) if a["reverse"] else out
    e.m.op("UNIDIRECTIONAL_SEQUENCE_LSTM", inputs, [seq], intermediates=mids, FusedActivationFunction=TANH, CellClip=0.0,
           ProjClip=0.0, TimeMajor=False, AsymmetricQuantizeInputs=False)
    if a["reverse"]:
        _reverse(e, seq, out, f"{p}/output")
