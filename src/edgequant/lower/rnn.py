"""Lowering of the recurrent ``rnn`` node (one LSTM/GRU layer-direction) into ``rnn``/``rnn_dyn``/``rnn_f``.

Registered into ``lower.core``'s STATIC/FLOAT tables. The arithmetic is in
``kernels.rnn``; here the constants: int8 weights per output channel (W_ih and W_hh quantized
separately, since they multiply different inputs, and stored side by side as one (G*H, I+H)
``weight`` so packed sizes count them), int32 biases on the sums' grids, the initial states on
their grids, and the LSTM cell state's power-of-two scale.

Cell scale: |c_t| < |c_0| + t (|f| < 1, |i g| < 1), so with ``cell_frac = 15 - ceil(log2(T + max|c_0|))``
the int16 cell state cannot saturate at the captured sequence length T. TFLite also requires a
power-of-two cell scale (its converter takes it from calibrated ranges instead) and computes tanh(c)
with at most 6 integer bits, so ``cell_frac >= 9``: beyond T + |c_0| = 64 a cell that grows past
+-64 saturates there (tanh(c) is 1 to the last bit by then; a later decay starts from 64).

LSTMs are lowered in TFLite's integer-LSTM arithmetic (``attrs["tflite"]``, ``kernels.rnn``), so the
same program exports to UNIDIRECTIONAL_SEQUENCE_LSTM bit for bit.
"""
from __future__ import annotations

import numpy as np

from .. import qmath
from ..ir import Node
from ..lowbit.edges import node_bits
from ..program import TensorInfo
from ..qmath import QParams
from ..weight_quant import quantize_weight_ex
from .core import FLOAT, STATIC, Lowering, int_input


def cell_frac(node: Node) -> int:
    """Fractional bits of the LSTM's int16 cell state (see the module docstring)."""
    c0 = float(np.abs(node.params.get("c0", np.zeros(1))).max(initial=0.0))
    t_len = int(node.shape[1]) if len(node.shape) > 1 else 1
    int_bits = int(np.ceil(np.log2(max(t_len + c0, 1.0))))
    return 15 - min(max(int_bits, 0), 6)


def _weights(L: Lowering, node: Node, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    out, extra = [], {}
    for key in ("w_ih", "w_hh"):
        w = node.params[key]
        learned = {"weight_scale": node.attrs[f"weight_scale_{key}"]} if f"weight_scale_{key}" in node.attrs else {}  # QAT
        part = Node(f"{node.name}.{key}", "linear", [], learned, {"weight": w, "bias": np.zeros(w.shape[0], np.float32)},
                    (node.shape[0], w.shape[0]), node.module)
        q, s, attrs = quantize_weight_ex(part, L.recipe, bits)
        out += [q.astype(np.int8), s.astype(np.float32)]
        extra.update({k: v for k, v in attrs.items() if k != "packed_weight_bytes"})
    return out[0], out[1], out[2], out[3], extra


def _hidden_qparams(L: Lowering, node: Node) -> QParams:
    """The int8 grid of h: the node's own output for ``output="h"``; for a cell-state node, that of the
    hidden-state node of the same layer-direction (else h's natural range (-1, 1))."""
    if node.attrs["output"] == "h":
        return L.act_qp[node.name]
    for n in L.g.nodes:
        if (n.op == "rnn" and n.attrs["output"] == "h" and n.inputs == node.inputs and n.name in L.act_qp
                and n.attrs["reverse"] == node.attrs["reverse"] and np.array_equal(n.params["w_ih"], node.params["w_ih"])):
            return L.act_qp[n.name]
    return qmath.compute_qparams(-1.0, 1.0, bits=8, signed=True)


def _int_bias(b: np.ndarray, scale: np.ndarray, w_int: np.ndarray) -> np.ndarray:
    limit = qmath.bias_limit(w_int).astype(np.float64)
    return np.clip(np.round(b.astype(np.float64) / scale.astype(np.float64)), -limit, limit).astype(np.int32)


def _s_rnn(L: Lowering, node: Node) -> None:
    x = int_input(L, node)
    qx, qy = L.qp(x), L.act_qp[node.name]
    qh = _hidden_qparams(L, node)
    cell, hid = node.attrs["cell"], int(node.attrs["hidden"])
    wb, _ = node_bits(L.g, L.recipe, node)
    wi, si, wh, sh, w_attrs = _weights(L, node, wb)
    s_x, s_h, zh = np.float32(qx.scale), np.float32(qh.scale), int(qh.zero_point)
    p = node.params
    arrays = {"weight": np.concatenate([wi, wh], axis=1), "w_scale_ih": si, "w_scale_hh": sh}
    h0 = np.asarray(p["h0"], np.float64).reshape(-1)
    arrays["h0"] = np.clip(qmath.round_half_away(h0 / float(s_h)) + zh, qh.qmin, qh.qmax).astype(np.int8)
    attrs = {"cell": cell, "reverse": bool(node.attrs["reverse"]), "output": node.attrs["output"], "hidden": hid,
             "h_scale": float(s_h), "h_zero_point": zh, "h_qmin": int(qh.qmin), "h_qmax": int(qh.qmax), "weight_bits": wb, "per_channel": bool(L.recipe.weights.per_channel),
             **w_attrs}
    if cell == "lstm":
        cf = cell_frac(node)
        attrs["cell_frac"] = cf
        attrs["tflite"] = True
        arrays["bias"] = _int_bias(p["b_ih"] + p["b_hh"], s_x * si, wi)
        c0 = np.asarray(p["c0"], np.float64).reshape(-1) * 2.0**cf
        arrays["s0"] = np.clip(qmath.round_half_away(c0), -32768, 32767).astype(np.int16)
    else:
        arrays["bias"] = _int_bias(p["b_ih"], s_x * si, wi)
        arrays["bias_h"] = _int_bias(p["b_hh"], s_h * sh, wh)
        arrays["s0"] = np.clip(qmath.round_half_away(h0 * 2.0**15), -32768, 32767).astype(np.int16)
    if node.attrs["output"] == "c":
        attrs["out_scale"] = float(np.float32(qy.scale))
    L.emit("rnn", node, [x], attrs, arrays, info=TensorInfo("int8", node.shape, qy))


def _f_rnn(L: Lowering, node: Node) -> None:
    p = node.params
    hid = int(node.attrs["hidden"])
    attrs = {k: node.attrs[k] for k in ("cell", "reverse", "output", "hidden")}
    states = {"h0": p["h0"].reshape(-1).astype(np.float32),
              "c0": p.get("c0", np.zeros((1, hid), np.float32)).reshape(-1).astype(np.float32)}
    if L.recipe.mode == "dynamic":
        wb, _ = node_bits(L.g, L.recipe, node)
        wi, si, wh, sh, w_attrs = _weights(L, node, wb)
        arrays = {"weight": np.concatenate([wi, wh], axis=1), "w_scale_ih": si, "w_scale_hh": sh,
                  "b_ih": p["b_ih"].astype(np.float32), "b_hh": p["b_hh"].astype(np.float32), **states}
        attrs.update(weight_bits=wb, **w_attrs)
        L.emit("rnn_dyn", node, [L.src(node)], attrs, arrays, info=TensorInfo("float32", node.shape))
        return
    wdt = np.float16 if L.recipe.mode == "fp16" else np.float32
    arrays = {k: p[k].astype(wdt) for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
    arrays.update(states)
    L.emit("rnn_f", node, [L.src(node)], attrs, arrays, info=TensorInfo("float32", node.shape))


STATIC["rnn"] = _s_rnn
FLOAT["rnn"] = _f_rnn
