"""The ONNX quantization operators, as thin adapters over edgequant's own kernels.

QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, ConvInteger,
QLinearMatMul and QLinearConv with the ONNX operator semantics (opset 10..25), for integer
element types only (int8/uint8, int16/uint16, int4/uint4, int2/uint2; float8/float4 are not
integer quantization and edgequant does not emit them). The arithmetic is ``qmath`` (quantize,
dequantize, requantize) and ``kernels.gemm`` (exact integer matmul/conv); this module only reads
the ONNX conventions: which input says the output type, how scales broadcast (per tensor, per
axis, blocked), how pads are laid out. Checked bit-exactly against the ONNX project's own test
vectors in ``tests/test_onnx_conformance.py``.

Containers: numpy has no 4- or 2-bit integers, so int4/int2 live in int8 arrays and uint4/uint2
in uint8 arrays (as edgequant computes sub-byte values everywhere; ``edgequant.packing`` packs
them for storage). The ONNX element type travels beside the array: ``quant_type(...)`` says which
one an operator produces. Inputs may also be ``ml_dtypes`` sub-byte arrays (what
``onnx.numpy_helper`` returns); they are read by dtype name and converted to their container.

Rounding, fixed here so that it is never implicit:

* QuantizeLinear / DynamicQuantizeLinear: ``x / scale`` in the input's float precision (float32),
  round half to even, add the zero point, saturate to the output type (``qmath.quantize_in``).
* QLinearMatMul / QLinearConv: exact integer accumulation of ``(a - a_zp) @ (b - b_zp)`` (+ int32
  bias), then ONNX Runtime's requantization (``qmath.requantize(rounding="onnxruntime")``):
  ``M = float32(float32(s_a) * float32(s_b) / float32(s_y))`` (per column/channel where the
  scales are), ``y = saturate(rint_half_even(float32(acc) * M) + y_zp)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import qmath
from ..errors import InputError, UnsupportedOpError
from .gemm import conv2d, exact_matmul

# ONNX TensorProto.DataType values (stable in the ONNX spec; tests check them against onnx).
FLOAT, UINT8, INT8, UINT16, INT16, INT32 = 1, 2, 3, 4, 5, 6
FLOAT16, DOUBLE, BFLOAT16 = 10, 11, 16
UINT4, INT4, UINT2, INT2 = 21, 22, 25, 26
# float8/float4 element types, by their ml_dtypes names (recognised only to refuse them clearly)
_NON_INTEGER = {17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 19: "float8_e5m2", 20: "float8_e5m2fnuz",
                23: "float4_e2m1fn", 24: "float8_e8m0fnu"}
_FLOAT_NP = {FLOAT: np.dtype(np.float32), FLOAT16: np.dtype(np.float16), DOUBLE: np.dtype(np.float64)}


@dataclass(frozen=True)
class QuantType:
    """An ONNX integer element type and the numpy container edgequant holds it in."""

    elem_type: int  # ONNX TensorProto.DataType
    name: str
    bits: int
    signed: bool
    container: np.dtype

    @property
    def qmin(self) -> int:
        return qmath.qrange(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return qmath.qrange(self.bits, self.signed)[1]


QUANT_TYPES: dict[int, QuantType] = {
    t.elem_type: t
    for t in (
        QuantType(UINT8, "uint8", 8, False, np.dtype(np.uint8)),
        QuantType(INT8, "int8", 8, True, np.dtype(np.int8)),
        QuantType(UINT16, "uint16", 16, False, np.dtype(np.uint16)),
        QuantType(INT16, "int16", 16, True, np.dtype(np.int16)),
        QuantType(UINT4, "uint4", 4, False, np.dtype(np.uint8)),
        QuantType(INT4, "int4", 4, True, np.dtype(np.int8)),
        QuantType(UINT2, "uint2", 2, False, np.dtype(np.uint8)),
        QuantType(INT2, "int2", 2, True, np.dtype(np.int8)),
    )
}
_BY_NAME = {t.name: t for t in QUANT_TYPES.values()}


def elem_type_of(a: np.ndarray) -> int:
    """ONNX element type of an array, by dtype name (works for ``ml_dtypes`` int4/uint4/int2/uint2)."""
    dt = np.asarray(a).dtype
    if dt.name in _BY_NAME:
        return _BY_NAME[dt.name].elem_type
    by_name = {v: k for k, v in _NON_INTEGER.items()}
    by_name.update({"int32": INT32, "bfloat16": BFLOAT16})
    by_name.update({v.name: k for k, v in _FLOAT_NP.items()})
    if dt.name in by_name:
        return by_name[dt.name]
    raise UnsupportedOpError(f"array dtype {dt.name!r} has no ONNX quantization element type")


def quant_type(elem_type: int) -> QuantType:
    """The integer quantization type of an ONNX element type; a clear error for float8/float4."""
    if elem_type in QUANT_TYPES:
        return QUANT_TYPES[elem_type]
    if elem_type in _NON_INTEGER:
        raise UnsupportedOpError(
            f"ONNX element type {_NON_INTEGER[elem_type]} (code {elem_type}) is a float8/float4 "
            "type, not integer quantization; edgequant does not emit it. Use int8/uint8/int16/"
            "uint16/int4/uint4/int2/uint2."
        )
    raise UnsupportedOpError(
        f"ONNX element type code {elem_type} is not a quantized integer type; use one of "
        f"{sorted(t.name for t in QUANT_TYPES.values())}"
    )


def as_container(a: np.ndarray, qt: QuantType | None = None) -> np.ndarray:
    """``a`` as a numpy array in its container dtype (ml_dtypes int4 -> int8, uint2 -> uint8, ...).

    With ``qt`` the values are checked against that type's range (an int8 container claiming to
    hold int4 must hold -8..7).
    """
    a = np.asarray(a)
    if qt is None:
        qt = quant_type(elem_type_of(a))
    if a.dtype.name in _BY_NAME and _BY_NAME[a.dtype.name].container != a.dtype:  # ml_dtypes
        a = a.astype(np.int16).astype(qt.container)
    elif a.dtype != qt.container:
        raise InputError(f"expected a {qt.container} container for ONNX {qt.name}, got dtype {a.dtype}")
    if a.size and (int(a.min()) < qt.qmin or int(a.max()) > qt.qmax):
        raise InputError(
            f"values {int(a.min())}..{int(a.max())} do not fit ONNX {qt.name} "
            f"[{qt.qmin}, {qt.qmax}]"
        )
    return a


def resolve_quant_type(zero_point: np.ndarray | None = None, output_dtype: int = 0) -> QuantType:
    """Output type of QuantizeLinear: ``output_dtype`` if set, else the zero point's type, else uint8.

    A zero point held in a container (int8 array) is accepted for ``output_dtype`` INT4/INT2.
    """
    if zero_point is not None:
        zdt = np.asarray(zero_point).dtype
        if output_dtype:
            qt = quant_type(output_dtype)
            if zdt.name != qt.name and zdt != qt.container:
                raise InputError(
                    f"QuantizeLinear output_dtype={qt.name} but the zero point is {zdt.name}; "
                    "they must agree"
                )
            return qt
        if zdt.name in _BY_NAME:
            return _BY_NAME[zdt.name]
        return quant_type(elem_type_of(zero_point))
    return quant_type(output_dtype) if output_dtype else QUANT_TYPES[UINT8]


def _axis_qparams(
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    shape: tuple[int, ...],
    axis: int,
    block_size: int,
    qt: QuantType | None,
) -> qmath.QParams:
    """ONNX's three scale layouts (scalar, 1-D along ``axis``, blocked) as a ``QParams``.

    ``qt`` None is an int32 tensor (DequantizeLinear of a bias): 32-bit signed, zero point 0.
    """
    scale = np.asarray(scale)
    if zero_point is None:
        zp = np.zeros(scale.shape, np.int64)
    elif qt is None:
        zp = np.asarray(zero_point, np.int64)
    else:
        zp = as_container(zero_point, qt).astype(np.int64)
    bits, signed = (32, True) if qt is None else (qt.bits, qt.signed)
    if zp.shape != scale.shape and not (zp.size == 1 and scale.size == 1):
        raise InputError(f"zero point shape {zp.shape} differs from scale shape {scale.shape}")
    ndim = len(shape)
    if scale.size == 1 and not block_size:  # per tensor ([1]-shaped counts as a scalar)
        return qmath.QParams(scale.reshape(()), zp.reshape(()), bits, signed)
    if not -ndim <= axis < ndim:
        raise InputError(f"axis {axis} is out of range for a {ndim}-D input of shape {shape}")
    axis %= ndim
    if block_size:
        s = qmath.block_broadcast(scale, shape, axis, block_size)
        z = qmath.block_broadcast(zp, shape, axis, block_size)
        return qmath.QParams(s, z, bits, signed)  # element-wise: broadcasts as is
    if scale.ndim != 1 or scale.shape[0] != shape[axis]:
        raise InputError(
            f"per-axis scale must be 1-D with {shape[axis]} entries (axis {axis} of {shape}), "
            f"got shape {scale.shape}"
        )
    return qmath.QParams(scale, zp, bits, signed, axis=axis)


# --------------------------------------------------------------------------- quantize / dequantize


def quantize_linear(
    x: np.ndarray,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    output_dtype: int = 0,
    saturate: int = 1,
    precision: int = 0,
) -> np.ndarray:
    """ONNX QuantizeLinear: ``saturate(rint(x / y_scale) + y_zero_point)`` -> container array.

    The output type is ``resolve_quant_type(y_zero_point, output_dtype)``. ``saturate`` only
    concerns float8 outputs, which edgequant does not produce. ``precision`` (opset 23+) names
    the float type of the division; by default it is the input's float type.
    """
    del saturate  # integer outputs always saturate
    x = np.asarray(x)
    qt = resolve_quant_type(y_zero_point, output_dtype)
    qp = _axis_qparams(y_scale, y_zero_point, x.shape, axis, block_size, qt)
    if precision:
        if precision not in _FLOAT_NP:
            raise UnsupportedOpError(f"QuantizeLinear precision type code {precision} is not supported")
        dtype = _FLOAT_NP[precision]
    else:
        dtype = np.result_type(x.dtype, np.asarray(y_scale).dtype)
    return qmath.quantize_in(x, qp, dtype).astype(qt.container)


def dequantize_linear(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    output_dtype: int = 0,
    x_type: int = 0,
) -> np.ndarray:
    """ONNX DequantizeLinear: ``(x - x_zero_point) * x_scale`` in float32, cast to the scale's type.

    ``x`` is an integer container (or ml_dtypes) array; ``x_type`` names its ONNX type when a
    container is ambiguous (int8 holding int4). int32 inputs are allowed (zero point 0). The
    difference is exact (int64) before the float32 multiply, as ONNX Runtime computes it.
    """
    x = np.asarray(x)
    x_scale = np.asarray(x_scale)
    if x_type:
        qt = quant_type(x_type) if x_type != INT32 else None
    elif x.dtype.name == "int32":
        qt = None
    else:
        qt = quant_type(elem_type_of(x))
    if qt is None:  # int32 (bias-like) input
        if x_zero_point is not None and np.any(np.asarray(x_zero_point) != 0):
            raise InputError("DequantizeLinear of int32 requires a zero point of 0")
        q = x.astype(np.int64)
    else:
        q = as_container(x, qt)
    qp = _axis_qparams(x_scale, x_zero_point, x.shape, axis, block_size, qt)
    out = qmath.dequantize(q, qp)
    if output_dtype:
        if output_dtype not in _FLOAT_NP:
            raise UnsupportedOpError(f"DequantizeLinear output_dtype code {output_dtype} is not supported")
        return out.astype(_FLOAT_NP[output_dtype])
    return out.astype(x_scale.dtype)


def dynamic_quantize_linear(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX DynamicQuantizeLinear: uint8 asymmetric quantization with the range of ``x`` (+ 0).

    In float32 as the spec writes it: ``scale = (max(0, max x) - min(0, min x)) / 255``
    (1.0 for an all-zero tensor, as ONNX Runtime), ``zp = rint(clip(0 - min/scale, 0, 255))``,
    ``y = saturate(rint(x / scale) + zp)``. Returns ``(y uint8, scale float32 0-d, zp uint8 0-d)``.
    """
    x = np.asarray(x, np.float32)
    if x.size == 0:
        raise InputError("DynamicQuantizeLinear needs a non-empty input")
    if not np.all(np.isfinite(x)):
        raise InputError("DynamicQuantizeLinear input is not finite; its range has no scale")
    qmin, qmax = np.float32(0), np.float32(255)
    hi = np.maximum(np.float32(0), x.max())
    lo = np.minimum(np.float32(0), x.min())
    scale = np.float32(1.0) if hi == lo else np.float32((hi - lo) / qmax)
    zp = np.rint(np.clip(qmin - lo / scale, qmin, qmax)).astype(np.uint8)
    qt = QUANT_TYPES[UINT8]
    y = qmath.quantize_in(x, qmath.QParams(np.asarray(scale), np.asarray(zp, np.int64), qt.bits, qt.signed))
    return y.astype(np.uint8), np.asarray(scale, np.float32), np.asarray(zp, np.uint8)


# --------------------------------------------------------------------------- integer matmul / conv


def _int32(acc: np.ndarray, op: str) -> np.ndarray:
    if acc.size and (acc.max() > qmath.INT32_MAX or acc.min() < qmath.INT32_MIN):
        raise InputError(f"{op}: the exact sum {int(np.abs(acc).max())} overflows the int32 accumulator")
    return acc.astype(np.int32)


def _centered(a: np.ndarray, zp: np.ndarray | None, row_axis_zp: bool) -> np.ndarray:
    """``a - zp`` in int32 for MatMul operands; a 1-D zp is per row of A / per column of B."""
    a = as_container(a).astype(np.int32)
    if zp is None:
        return a
    z = as_container(zp).astype(np.int32)
    if z.size == 1:
        return a - z.reshape(())
    if z.ndim == 1:
        z = z.reshape(-1, 1) if row_axis_zp else z.reshape(1, -1)
    return a - z


def matmul_integer(
    a: np.ndarray, b: np.ndarray, a_zero_point: np.ndarray | None = None, b_zero_point: np.ndarray | None = None
) -> np.ndarray:
    """ONNX MatMulInteger: ``(a - a_zp) @ (b - b_zp)``, exact, int32 (numpy matmul broadcasting)."""
    if np.ndim(a) < 1 or np.ndim(b) < 1:
        raise InputError("MatMulInteger operands must be at least 1-D")
    return _int32(_matmul_acc(_centered(a, a_zero_point, True), _centered(b, b_zero_point, False)), "MatMulInteger")


def _matmul_acc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact numpy-semantics matmul of integer arrays (1-D operands promoted like np.matmul)."""
    a1, b1 = a.ndim == 1, b.ndim == 1
    a2 = a[None, :] if a1 else a
    b2 = b[:, None] if b1 else b
    out = exact_matmul(a2, b2)
    if a1:
        out = out[..., 0, :]
    if b1:
        out = out[..., 0]
    return out


def _conv_geometry(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    auto_pad: str | bytes,
    dilations,
    kernel_shape,
    pads,
    strides,
) -> tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int]]:
    """ONNX Conv attributes (2-D spatial) -> (stride, (top, bottom, left, right), dilation)."""
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    spatial = len(x_shape) - 2
    ks = tuple(kernel_shape) if kernel_shape else tuple(w_shape[2:])
    if tuple(w_shape[2:]) != ks:
        raise InputError(f"kernel_shape {ks} does not match the weight's spatial shape {tuple(w_shape[2:])}")
    st = tuple(strides) if strides else (1,) * spatial
    dl = tuple(dilations) if dilations else (1,) * spatial
    if auto_pad in ("", "NOTSET"):
        pd = tuple(pads) if pads else (0,) * (2 * spatial)
    elif auto_pad == "VALID":
        pd = (0,) * (2 * spatial)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(spatial):
            n = x_shape[2 + i]
            out = -(-n // st[i])
            total = max((out - 1) * st[i] + (ks[i] - 1) * dl[i] + 1 - n, 0)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        pd = tuple(begin + end)
    else:
        raise UnsupportedOpError(f"auto_pad {auto_pad!r} is not an ONNX value (NOTSET, VALID, SAME_UPPER, SAME_LOWER)")
    if len(st) != spatial or len(dl) != spatial or len(pd) != 2 * spatial:
        raise InputError(f"conv attributes strides={st} dilations={dl} pads={pd} do not fit {spatial} spatial dims")
    if spatial == 1:  # (N, C, L) runs as (N, C, 1, L)
        return (1, st[0]), (0, 0, pd[0], pd[1]), (1, dl[0])
    # ONNX pads are [H_begin, W_begin, H_end, W_end]; gemm.conv2d wants (top, bottom, left, right)
    return (st[0], st[1]), (pd[0], pd[2], pd[1], pd[3]), (dl[0], dl[1])


def _conv_acc(x: np.ndarray, w: np.ndarray, group: int, attrs: dict, op: str) -> np.ndarray:
    """Exact integer convolution of already zero-point-centred int32 tensors -> int64."""
    if x.ndim not in (3, 4) or w.ndim != x.ndim:
        raise UnsupportedOpError(
            f"{op}: only 1-D and 2-D convolutions are supported, got input of rank {x.ndim} and weight rank {w.ndim}"
        )
    if x.shape[1] != w.shape[1] * group or w.shape[0] % group:
        raise InputError(
            f"{op}: input channels {x.shape[1]} / weight {w.shape} do not fit group={group}"
        )
    stride, padding, dilation = _conv_geometry(x.shape, w.shape, **attrs)
    one_d = x.ndim == 3
    if one_d:
        x, w = x[:, :, None, :], w[:, :, None, :]
    acc = conv2d(x, w, stride, padding, dilation, group, pad_value=0, exact=True)
    return acc[:, :, 0, :] if one_d else acc


def _conv_w_centered(w: np.ndarray, w_zero_point: np.ndarray | None) -> np.ndarray:
    w = as_container(w).astype(np.int32)
    if w_zero_point is None:
        return w
    z = as_container(w_zero_point).astype(np.int32)
    if z.size == 1:
        return w - z.reshape(())
    if z.ndim != 1 or z.shape[0] != w.shape[0]:
        raise InputError(f"w_zero_point must be a scalar or have {w.shape[0]} entries (one per output channel), got {z.shape}")
    return w - z.reshape((-1,) + (1,) * (w.ndim - 1))


def _x_centered(x: np.ndarray, x_zero_point: np.ndarray | None, op: str) -> np.ndarray:
    x = as_container(x).astype(np.int32)
    if x_zero_point is None:
        return x
    z = as_container(x_zero_point)
    if z.size != 1:
        raise InputError(f"{op}: x_zero_point must be a scalar (per-tensor), got shape {z.shape}")
    return x - z.astype(np.int32).reshape(())


def conv_integer(
    x: np.ndarray,
    w: np.ndarray,
    x_zero_point: np.ndarray | None = None,
    w_zero_point: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations=None,
    group: int = 1,
    kernel_shape=None,
    pads=None,
    strides=None,
) -> np.ndarray:
    """ONNX ConvInteger: exact ``conv(x - x_zp, w - w_zp)`` in int32; padding is the zero point."""
    attrs = dict(auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape, pads=pads, strides=strides)
    acc = _conv_acc(_x_centered(x, x_zero_point, "ConvInteger"), _conv_w_centered(w, w_zero_point), group, attrs, "ConvInteger")
    return _int32(acc, "ConvInteger")


def _requantize_float(acc: np.ndarray, multiplier: np.ndarray, y_zero_point: np.ndarray | None, qt: QuantType) -> np.ndarray:
    """ONNX Runtime requantization (float32 multiply, round half to even, saturate)."""
    m = np.asarray(multiplier, np.float32)
    m0, shift = qmath.quantize_multiplier(m)
    zp = 0 if y_zero_point is None else np.asarray(as_container(y_zero_point, qt), np.int64).reshape(())
    y = qmath.requantize(
        _int32(acc, "requantize"), m0=m0, shift=shift, real_multiplier=m, zero_point=zp,
        qmin=qt.qmin, qmax=qt.qmax, rounding="onnxruntime",
    )
    return y.astype(qt.container)


def _scale_f32(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s)
    if not np.issubdtype(s.dtype, np.floating) and s.dtype.kind != "V":
        raise InputError(f"scales must be floating point, got {s.dtype}")
    s = s.astype(np.float32)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InputError(f"scales must be finite and > 0, got {s.ravel()[:8]}")
    return s


def _scalar_zp(zp: np.ndarray | None, name: str) -> None:
    if zp is not None and np.asarray(zp).size != 1:
        raise UnsupportedOpError(f"{name} must be per tensor (one value), got shape {np.shape(zp)}")


def qlinear_matmul(
    a: np.ndarray,
    a_scale: np.ndarray,
    a_zero_point: np.ndarray | None,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zero_point: np.ndarray | None,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray | None,
) -> np.ndarray:
    """ONNX QLinearMatMul: exact ``(a - a_zp) @ (b - b_zp)`` requantized to ``y``'s type.

    ``M = s_a * s_b / s_y`` in float32 (a 1-D ``a_scale`` is per row of ``a``, a 1-D ``b_scale``
    per column of ``b``); ``y = saturate(rint(float32(acc) * M) + y_zp)``. The output type is
    ``y_zero_point``'s (``a``'s when it is absent).
    """
    if np.ndim(a) < 2 or np.ndim(b) < 2:
        raise InputError("QLinearMatMul operands must be at least 2-D")
    qt = quant_type(elem_type_of(y_zero_point if y_zero_point is not None else a))
    acc = _matmul_acc(_centered(a, a_zero_point, True), _centered(b, b_zero_point, False))
    sa, sb, sy = _scale_f32(a_scale), _scale_f32(b_scale), _scale_f32(y_scale)
    sa = sa.reshape(()) if sa.size == 1 else sa.reshape(-1, 1)  # per row of a
    sb = sb.reshape(()) if sb.size == 1 else sb.reshape(1, -1)  # per column of b
    _scalar_zp(y_zero_point, "QLinearMatMul y_zero_point")
    if sy.size != 1:
        raise UnsupportedOpError(f"QLinearMatMul y_scale must be per tensor, got shape {sy.shape}")
    multiplier = (sa * sb / sy.reshape(())).astype(np.float32)
    return _requantize_float(acc, multiplier, y_zero_point, qt)


def qlinear_conv(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray | None,
    w: np.ndarray,
    w_scale: np.ndarray,
    w_zero_point: np.ndarray | None,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray | None,
    B: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations=None,
    group: int = 1,
    kernel_shape=None,
    pads=None,
    strides=None,
) -> np.ndarray:
    """ONNX QLinearConv: exact ``conv(x - x_zp, w - w_zp) + B`` requantized to ``y``'s type.

    ``B`` is int32 with scale ``s_x * s_w`` and zero point 0. ``M[c] = s_x * s_w[c] / s_y`` in
    float32 (``w_scale`` per tensor or per output channel); ``y = saturate(rint(float32(acc) *
    M) + y_zp)``.
    """
    qt = quant_type(elem_type_of(y_zero_point if y_zero_point is not None else x))
    attrs = dict(auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape, pads=pads, strides=strides)
    acc = _conv_acc(_x_centered(x, x_zero_point, "QLinearConv"), _conv_w_centered(w, w_zero_point), group, attrs, "QLinearConv")
    o = acc.shape[1]
    if B is not None:
        b = np.asarray(B)
        if b.dtype != np.int32 or b.shape != (o,):
            raise InputError(f"QLinearConv bias must be int32 of shape ({o},), got {b.dtype} {b.shape}")
        acc = acc + b.astype(np.int64).reshape((1, o) + (1,) * (acc.ndim - 2))
    sx, sw, sy = _scale_f32(x_scale), _scale_f32(w_scale), _scale_f32(y_scale)
    if sx.size != 1 or sy.size != 1:
        raise UnsupportedOpError("QLinearConv x_scale and y_scale must be per tensor")
    _scalar_zp(y_zero_point, "QLinearConv y_zero_point")
    if sw.size == 1:
        sw = sw.reshape(())
    elif sw.ndim == 1 and sw.shape[0] == o:
        sw = sw.reshape((1, o) + (1,) * (acc.ndim - 2))
    else:
        raise InputError(f"QLinearConv w_scale must be a scalar or have {o} entries, got shape {sw.shape}")
    multiplier = (sx.reshape(()) * sw / sy.reshape(())).astype(np.float32)
    return _requantize_float(acc, multiplier, y_zero_point, qt)


# ONNX op name -> adapter (the interpreter/exporter table; attributes are keyword arguments)
ONNX_OPS = {
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": dequantize_linear,
    "DynamicQuantizeLinear": dynamic_quantize_linear,
    "MatMulInteger": matmul_integer,
    "ConvInteger": conv_integer,
    "QLinearMatMul": qlinear_matmul,
    "QLinearConv": qlinear_conv,
}
