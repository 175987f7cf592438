"""Conv and Linear: integer (static), dynamic (int GEMM, float edges) and float variants.

Integer conv (TFLite/Jacob et al.): ``acc = sum((x - zx) * w) + bias`` exactly in int32 range,
then ``y = clamp(zy + requant(acc, M_c))`` per output channel, act clamp fused into the bounds.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import qmath, wide
from ..graph_exec import conv_float
from ..lowbit import groups
from . import RUN, SIM, gemm, native, register, wide_ort
from .context import KernelContext, act_bounds


def w_int(instr) -> np.ndarray:
    """The integer weight the GEMM multiplies: the stored codes, or with group-wise scales
    (``lowbit/groups.py``) codes times their group's multiplier (int32), made once per instruction."""
    mult = instr.arrays.get(groups.ARRAY)
    if mult is None:
        return instr.arrays["weight"]
    cache = instr.__dict__.setdefault("_cache", {})
    if "w_int" not in cache:
        cache["w_int"] = groups.effective_weight(instr.arrays["weight"], mult, instr.attrs[groups.ATTR])
    return cache["w_int"]


def _w_f32(instr) -> np.ndarray:
    """float32 copy of the integer weights, made once per instruction (exact: |w| < 2^24)."""
    cache = instr.__dict__.setdefault("_cache", {})
    if "w_f32" not in cache:
        cache["w_f32"] = w_int(instr).astype(np.float32)
    return cache["w_f32"]


def _as4d(x: np.ndarray, attrs: dict):
    return (x[:, :, None, :], True) if attrs.get("dims", 2) == 1 and x.ndim == 3 else (x, False)


def _w_sums(instr) -> np.ndarray:
    """Per-output-channel sum of the integer weights (for the zero-point correction), cached."""
    cache = instr.__dict__.setdefault("_cache", {})
    if "w_sum" not in cache:
        w = w_int(instr).astype(np.int64)
        cache["w_sum"] = w.reshape(w.shape[0], -1).sum(axis=1)
    return cache["w_sum"]


def _w_torch(instr) -> torch.Tensor:
    """float32 torch weights (exact integers), made once per instruction."""
    cache = instr.__dict__.setdefault("_cache", {})
    if "w_torch" not in cache:
        cache["w_torch"] = torch.from_numpy(_w_f32(instr))
    return cache["w_torch"]


def _input_slices(instr, d: int) -> list[tuple[int, int]] | None:
    """Input-channel ranges whose float32 partial sums stay exact for inputs bounded by ``d``.

    Any partial sum of output ``o`` over a range is bounded by ``d * sum|w[o, range]|`` whatever
    order the library adds in, so ranges are grown greedily while that bound stays below 2^24.
    One range where the whole reduction fits; ``None`` where a grouped conv or a single input
    channel does not fit (the caller takes the int64 route). Cached per ``d``.
    """
    cache = instr.__dict__.setdefault("_cache", {})
    key = ("slices", d)
    if key not in cache:
        w = np.abs(w_int(instr).astype(np.int64))
        per_in = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2)  # (O, C_in/groups)
        limit = (gemm.F32_EXACT - 1) // max(d, 1)
        if int(per_in.sum(axis=1).max(initial=0)) <= limit:
            cache[key] = [(0, w.shape[1])]
        elif instr.attrs.get("groups", 1) != 1 or int(per_in.max(initial=0)) > limit:
            cache[key] = None
        else:
            slices, start, run = [], 0, np.zeros(w.shape[0], np.int64)
            for c in range(w.shape[1]):
                if int((run + per_in[:, c]).max()) > limit:
                    slices.append((start, c))
                    start, run = c, np.zeros_like(run)
                run += per_in[:, c]
            cache[key] = slices + [(start, w.shape[1])]
    return cache[key]


def _gemm_f32(instr, xt: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if instr.op.startswith("linear"):
        return F.linear(xt, w)
    return conv_float(xt, w, None, instr.attrs)


def float_accumulate(instr, x: np.ndarray, zx: int) -> np.ndarray | None:
    """Exact ``sum((x - zx) * w)`` of conv/linear on int8 input as float32 (or float64) (N, O, ...).

    float32 BLAS/oneDNN sums integers exactly while every partial sum stays below 2^24, which
    ``_input_slices`` guarantees per range of input channels: one float32 convolution where the
    whole reduction fits, else one per range, added in float64 (exact below 2^53). Padding with
    zeros pads with the real zero (the input is shifted by its zero point first). ``None`` where
    no slicing fits (the caller takes the int64 route).
    """
    if x.dtype == np.int16 and zx == 0:  # 16x8 (act16)
        return _int16_accumulate(instr, x)
    if x.dtype != np.int8:
        return None
    slices = _input_slices(instr, max(127 - zx, zx + 128))
    if slices is None:
        return None
    return _sliced_f32(instr, native.shifted_f32(x, zx), slices).numpy()


def _sliced_f32(instr, xt: torch.Tensor, slices: list[tuple[int, int]]) -> torch.Tensor:
    """float32 conv/linear of ``xt`` (exact integers), one GEMM per input-channel range, the
    ranges added in float64."""
    w, linear = _w_torch(instr), instr.op.startswith("linear")
    with gemm.exact_float():
        if len(slices) == 1:
            return _gemm_f32(instr, xt, w)
        acc = None
        for c0, c1 in slices:
            y = _gemm_f32(instr, xt[..., c0:c1] if linear else xt[:, c0:c1], w[:, c0:c1])
            acc = y.to(torch.float64) if acc is None else acc.add_(y)
    return acc


def byte_split_slices(instr) -> list[tuple[int, int]] | None:
    """Input-channel ranges in which float32 sums ``hi * w`` and ``lo * w`` of an int16 input split
    into bytes (``x = 256 hi + lo``, |hi|, lo <= 255) stay exact: ``_int16_accumulate`` and the ONNX
    export of a 16-bit conv (``export/onnx/wide.py``) compute the exact accumulator this way."""
    return _input_slices(instr, 255)


def _int16_accumulate(instr, x: np.ndarray) -> np.ndarray:
    """Exact conv/linear of int16 input (zero point 0) as float64 (N, O, ...).

    ``x = 256 * hi + lo`` with ``hi`` in [-128, 127] and ``lo`` in [0, 255]: two float32 GEMMs on
    byte-sized integers, exact under ``_input_slices(255)``, combined in float64 (exact below 2^53).
    Where no slicing fits, one float64 GEMM (products < 2^22, sums < 2^53 for any K < 2^31).
    Why: NumPy's int64 windows ran Lite1 at 16-bit activations ~100x slower than at 8 bits, and
    float64 depthwise convolution ~4x slower than two float32 ones.
    """
    slices = byte_split_slices(instr)
    if slices is None:
        cache = instr.__dict__.setdefault("_cache", {})
        if "w_f64" not in cache:
            cache["w_f64"] = torch.from_numpy(w_int(instr).astype(np.float64))
        with gemm.exact_float():
            return _gemm_f32(instr, torch.from_numpy(x.astype(np.float64)), cache["w_f64"]).numpy()
    xi = x.astype(np.int32)
    hi = _sliced_f32(instr, torch.from_numpy((xi >> 8).astype(np.float32)), slices).to(torch.float64)
    lo = _sliced_f32(instr, torch.from_numpy((xi & 255).astype(np.float32)), slices)
    return hi.mul_(256.0).add_(lo).numpy()


def int_accumulate(instr, x: np.ndarray, zx: int) -> np.ndarray:
    """Exact ``sum((x - zx) * w)`` of conv/linear on raw integer input: float32 holding exact
    integers where ``float_accumulate`` can (the fast path), else int64 (N, O, ...).

    The int64 route computes ``sum(x * w) - zx * sum(w)`` so the GEMM runs on int8 x int8 (padding
    holds zx, the integer for real 0, so padded taps cancel exactly).
    """
    fast = float_accumulate(instr, x, zx)
    if fast is not None:
        return fast
    a = instr.attrs
    w = w_int(instr)
    if instr.op.startswith("linear"):
        acc = gemm.exact_matmul(x, w.T, _w_f32(instr).T)
    else:
        x4, squeeze = _as4d(x, a)
        acc = gemm.conv2d(x4, w, tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"],
                          pad_value=zx, exact=True, w_f32=_w_f32(instr))
        acc = acc[:, :, 0, :] if squeeze else acc
    if zx:
        acc = acc - zx * _w_sums(instr).reshape(_channel_shape(acc))
    return acc


def _channel_shape(acc: np.ndarray) -> tuple[int, ...]:
    return (1, -1) + (1,) * (acc.ndim - 2)


def _gemm_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    if wide_ort.applies(instr, ctx):  # 16-bit: the exact accumulator, rescaled in float64, as exported
        zx = int(ctx.qp(instr.inputs[0]).zero_point)
        return wide_ort.rescale(instr, int_accumulate(instr, inputs[0], zx), ctx)
    zx = int(ctx.qp(instr.inputs[0]).zero_point)
    return requantize_accumulator(instr, int_accumulate(instr, inputs[0], zx), ctx)


def requantize_accumulator(instr, acc: np.ndarray, ctx: KernelContext, axis: int = 1) -> np.ndarray:
    """Accumulator (N, C_out, ...) of exact integers + bias (if the instruction has one) -> the
    output int8 tensor, per-channel requantization along ``axis`` (1; -1 for channels-last, e.g.
    layernorm). One fused pass (``native.requantize``; ``qmath.requantize`` is its spec)."""
    lo, hi = act_bounds(instr, ctx)
    qy = ctx.qp(instr.output)
    if instr.attrs.get("acc64"):  # 16-bit input (TFLite 16x8): int64 accumulator and bias
        return wide.requantize_64(acc, bias=instr.arrays.get("bias"), m0=instr.arrays["m0"], shift=instr.arrays["shift"],
                                  zero_point=int(qy.zero_point), qmin=lo, qmax=hi, axis=axis, out_bits=qy.bits)
    if qy.bits > 8:  # int8 input, int16 output: the int32 requantization, wider container
        cs = [1] * acc.ndim
        if np.size(instr.arrays["m0"]) > 1 or np.size(instr.arrays.get("bias", 0)) > 1:
            cs[axis % acc.ndim] = -1
        bias = instr.arrays.get("bias")
        a = acc.astype(np.int64) + (0 if bias is None else np.asarray(bias, np.int64).reshape(cs))
        return qmath.requantize(a, m0=instr.arrays["m0"].reshape(cs), shift=instr.arrays["shift"].reshape(cs),
                                real_multiplier=instr.arrays["multiplier"].reshape(cs), zero_point=int(qy.zero_point),
                                qmin=lo, qmax=hi, rounding=ctx.requant_rounding(instr)).astype(np.int16)
    return native.requantize(acc, axis=axis, bias=instr.arrays.get("bias"), m0=instr.arrays["m0"],
                             shift=instr.arrays["shift"], multiplier=instr.arrays["multiplier"],
                             zero_point=int(ctx.qp(instr.output).zero_point), qmin=lo, qmax=hi,
                             rounding=ctx.requant_rounding(instr))


def _dequant_params(instr, s_in: float, dtype=torch.float64):
    w = torch.as_tensor(w_int(instr), dtype=dtype)
    ws = torch.as_tensor(instr.arrays["w_scale"], dtype=dtype)
    wd = w * ws.reshape((-1,) + (1,) * (w.ndim - 1))
    b = torch.as_tensor(instr.arrays["bias"], dtype=dtype) * (s_in * ws)
    return wd, b


def _float_op(instr, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if instr.op.startswith("linear"):
        return F.linear(x, w, b)
    return conv_float(x, w, b, instr.attrs)


def _gemm_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    s_in = float(ctx.qp(instr.inputs[0]).scale)
    lo, hi = act_bounds(instr, ctx)
    y = _grid_gemm(instr, inputs[0], s_in, int(ctx.qp(instr.inputs[0]).zero_point))
    if y is None:
        w, b = _dequant_params(instr, s_in)
        y = _float_op(instr, inputs[0], w, b)
    return ctx.fq(y, instr.output, lo, hi)


def _grid_gemm(instr, x: torch.Tensor, s_in: float, zx: int) -> torch.Tensor | None:
    """The float64 conv/linear of on-grid inputs via the exact integer sum, scaled once.

    Why: on the input grid ``x = s_in (k - zx)``, so ``conv(x, w_real) = s_in w_s conv(k - zx, w_int)``;
    the exact float32 route (``float_accumulate``) computes that sum with oneDNN, where a float64
    convolution has no fast kernel on CPU (simulate at 240x240 took minutes per batch). Same real
    value; only float64 rounding differs. ``None`` (the float64 path) when gradients are needed or
    the values are not on the grid.
    """
    if x.requires_grad or x.dtype != torch.float64 or "weight" not in instr.arrays or zx < -128 or zx > 127 \
            or instr.attrs.get("acc64"):
        return None
    k = torch.round(x / s_in)
    if not torch.equal(k * s_in, x):  # fake-quantized values are exactly s_in * integer
        return None
    k = (k + zx).clamp_(-128, 127).to(torch.int8).numpy()
    acc = float_accumulate(instr, k, zx)
    if acc is None:
        return None
    shape = (-1,) if instr.op.startswith("linear") else _channel_shape(acc)  # linear: channels last
    ws = torch.as_tensor(instr.arrays["w_scale"], dtype=torch.float64).reshape(shape)
    y = torch.from_numpy(acc).to(torch.float64)
    if "bias" in instr.arrays:
        y = y + torch.as_tensor(instr.arrays["bias"], dtype=torch.float64).reshape(shape)
    return y * (s_in * ws)


def rows(fn):
    """Linear on (N, ..., I): run ``fn`` on the (rows, I) view and restore the leading dims (the
    channel axis of every linear kernel is then dim 1, as for 2-D inputs)."""
    def wrapped(instr, inputs, ctx):
        x = inputs[0]
        if not instr.op.startswith("linear") or x.ndim <= 2:
            return fn(instr, inputs, ctx)
        y = fn(instr, [x.reshape(-1, x.shape[-1])], ctx)
        return y.reshape(x.shape[:-1] + (y.shape[-1],))
    return wrapped


for _op in ("conv", "linear"):
    register(_op, RUN)(rows(_gemm_run))
    register(_op, SIM)(_gemm_sim)


# -- dynamic: activations quantized per batch at run time, integer GEMM, float output ------------
# Options (lowering copies them into the instruction): ``in_scale`` (array, SmoothQuant,
# ``lowbit/smooth.py``): the input is multiplied per channel before it is quantized (the weights
# carry the inverse); attr ``dynamic_scale="token"``: one scale and zero point per row (token) of a
# linear's input instead of one per batch, so a token with an outlier does not coarsen the others.
def dynamic_qparams(x_min: float, x_max: float) -> qmath.QParams:
    return qmath.compute_qparams(x_min, x_max, bits=8, signed=True)


def per_token(instr) -> bool:
    return instr.attrs.get("dynamic_scale") == "token" and instr.op.startswith("linear")


def _float_act(y, attrs: dict):
    if "act" not in attrs:
        return y
    lo, hi = attrs["act"]
    if isinstance(y, torch.Tensor):
        return torch.clamp(y, min=None if lo == float("-inf") else lo, max=None if hi == float("inf") else hi)
    return np.clip(y, lo, hi)


def _dyn_input(instr, x):
    """The float input the dynamic quantizer sees: times the SmoothQuant factors where there are some."""
    s = instr.arrays.get("in_scale")
    if s is None:
        return x
    return x * (torch.as_tensor(s, dtype=x.dtype) if isinstance(x, torch.Tensor) else s.astype(np.float32))


def token_qparams(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row uint8 (scale, zero point) of a float32 (rows, K) input, both (rows, 1) float32: ONNX
    DynamicQuantizeLinear's arithmetic applied to each row (range widened to hold 0, ``(max - min) /
    255`` in float32, zero point ``round_half_even(-min / scale)`` clipped to [0, 255]), in every
    rounding mode, because this is exactly what the exported graph computes (``export/onnx/float_ops``)."""
    lo = np.minimum(x.min(axis=1, keepdims=True), np.float32(0))
    hi = np.maximum(x.max(axis=1, keepdims=True), np.float32(0))
    s = (hi - lo) / np.float32(255)
    s = np.where(s > 0, s, np.float32(1)).astype(np.float32)
    zp = np.clip(np.rint(-lo / s), 0, 255).astype(np.float32)
    return s, zp


def _dyn_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    x = _dyn_input(instr, inputs[0].astype(np.float32))
    if per_token(instr):  # x is (rows, K) here (``rows``): a scale and zero point per row
        s_x, zp = token_qparams(x)
        q = (np.clip(np.rint(x / s_x) + zp, 0, 255) - 128).astype(np.int8)  # uint8 codes, held as int8 - 128
        zx = zp.astype(np.int64) - 128
        acc = int_accumulate(instr, q, 0) - zx * _w_sums(instr)[None, :]
        y = acc.astype(np.float32) * (s_x * instr.arrays["w_scale"][None, :].astype(np.float32))
        return _float_act(y + instr.arrays["bias_f"][None, :], instr.attrs).astype(np.float32)
    if ctx.rounding == "onnxruntime":  # ONNX DynamicQuantizeLinear (uint8, float32 range math), as exported
        from .onnx_ops import dynamic_quantize_linear

        qu8, s_x, z_u8 = dynamic_quantize_linear(x)
        q, zx, s_x = (qu8.astype(np.int16) - 128).astype(np.int8), int(z_u8) - 128, np.float32(s_x)
    else:
        qp = dynamic_qparams(float(x.min()), float(x.max()))
        v = x / np.float32(qp.scale)
        q = np.clip(qmath.round_half_away(v) + int(qp.zero_point), -128, 127).astype(np.int8)
        zx, s_x = int(qp.zero_point), np.float32(qp.scale)
    acc = int_accumulate(instr, q, zx)
    cs = _channel_shape(acc)
    scale = (s_x * instr.arrays["w_scale"]).astype(np.float32).reshape(cs)
    y = acc.astype(np.float32) * scale + instr.arrays["bias_f"].reshape(cs)
    return _float_act(y, instr.attrs).astype(np.float32)


def _dyn_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    x = _dyn_input(instr, inputs[0])
    if per_token(instr):
        x2 = x.detach().reshape(-1, x.shape[-1]).float().numpy()
        s, z = (torch.as_tensor(v.reshape(x.shape[:-1] + (1,)), dtype=x.dtype) for v in token_qparams(x2))
        xq = qmath.fake_quantize(x, s, z, 0, 255)
    else:
        qp = dynamic_qparams(float(x.min()), float(x.max()))
        xq = qmath.fake_quantize(x, float(qp.scale), float(qp.zero_point), -128, 127, half_away=ctx.half_away)
    w = torch.as_tensor(w_int(instr), dtype=x.dtype)
    ws = torch.as_tensor(instr.arrays["w_scale"], dtype=x.dtype)
    wd = w * ws.reshape((-1,) + (1,) * (w.ndim - 1))
    return _float_act(_float_op(instr, xq, wd, torch.as_tensor(instr.arrays["bias_f"], dtype=x.dtype)), instr.attrs)


for _op in ("conv_dyn", "linear_dyn"):
    register(_op, RUN)(rows(_dyn_run))
    register(_op, SIM)(_dyn_sim)


# -- float (fp32 / fp16 weights) -------------------------------------------------------------------
def _float_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    x = inputs[0]
    w = torch.as_tensor(instr.arrays["weight"].astype(np.float32), dtype=x.dtype)
    b = torch.as_tensor(instr.arrays["bias"].astype(np.float32), dtype=x.dtype)
    return _float_act(_float_op(instr, x, w, b), instr.attrs)


def _float_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    with torch.no_grad():
        return _float_sim(instr, [torch.from_numpy(np.ascontiguousarray(inputs[0], np.float32))], ctx).numpy()


for _op in ("conv_f", "linear_f"):
    register(_op, RUN)(_float_run)
    register(_op, SIM)(_float_sim)
