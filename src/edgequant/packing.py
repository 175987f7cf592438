"""Bit-packing of low-bit integer tensors for artifacts (and their true size).

Sub-byte values are computed in int8 containers everywhere in edgequant; only stored tensors are
packed. The layout is one little-endian bit stream: element ``i`` occupies bits
``[i*bits, (i+1)*bits)`` of the buffer, bit ``k`` of the stream being bit ``k % 8`` (LSB first) of
byte ``k // 8``. For the widths that divide a byte this is exactly the familiar layouts:

* 4 bits: two per byte, **low nibble first** (ONNX INT4/UINT4 raw data);
* 2 bits: four per byte, element 0 in bits 0-1 (ONNX INT2/UINT2);
* 1 bit: eight per byte, element 0 in bit 0;
* 8 bits: one per byte (int8 as its two's complement byte).

Widths 3, 5, 6 and 7 are bit-packed the same way (an element may straddle two bytes), so the
size of a ``b``-bit tensor is always ``ceil(numel * b / 8)`` bytes: no width is rounded up to the
next one. The last byte's unused high bits are zero.

Codes: signed values are stored as ``b``-bit two's complement, range
``[-2^(b-1), 2^(b-1) - 1]``; unsigned values as themselves, ``[0, 2^b - 1]``. The 1-bit signed case
is the binary (XNOR-Net) weight: values are ``-1`` or ``+1`` and the bit stores the sign,
``1 = +1``, ``0 = -1``; unsigned 1-bit stores ``{0, 1}``.

Per-channel widths (bit allocation gives each output channel of a weight its own width):
``pack_rows`` writes one byte per channel holding its width, then each channel's row (``q[c]``,
C order) packed as above at its own width, rows concatenated in channel order; every row starts
on a byte boundary. Its size is ``packed_rows_nbytes``: ``C + sum_c ceil(row_size * bits_c / 8)``
bytes, what bit allocation records as ``packed_weight_bytes`` and ``size_bytes`` counts. Values are signed.
"""
from __future__ import annotations

import numpy as np

from .errors import ArtifactError, RecipeError

MAX_BITS = 8


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= MAX_BITS:
        raise RecipeError(f"cannot pack {bits!r}-bit values; packed widths are 1..{MAX_BITS} bits")
    return int(bits)


def value_range(bits: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest value a ``bits``-wide packed element holds (1-bit signed: -1, +1)."""
    bits = _check_bits(bits)
    if bits == 1:
        return (-1, 1) if signed else (0, 1)
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` values of ``bits`` bits occupy packed: ``ceil(numel * bits / 8)``."""
    bits = _check_bits(bits)
    if int(numel) < 0:
        raise RecipeError(f"element count must be >= 0, got {numel}")
    return (int(numel) * bits + 7) // 8


def unpacked_dtype(bits: int, signed: bool) -> np.dtype:
    """Container ``unpack`` returns: int8, except unsigned 8-bit (0..255 does not fit int8) -> uint8."""
    return np.dtype(np.uint8) if _check_bits(bits) == 8 and not signed else np.dtype(np.int8)


def _codes(q: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Values -> unsigned ``bits``-bit codes (uint8), after checking every value fits."""
    q = np.asarray(q)
    if q.dtype == np.bool_ or not np.issubdtype(q.dtype, np.integer):
        raise ArtifactError(
            f"can only pack integer tensors, got dtype {q.dtype}; quantize to integers first"
        )
    lo, hi = value_range(bits, signed)
    flat = q.reshape(-1).astype(np.int64)
    if flat.size:
        bad = (flat < lo) | (flat > hi)
        if bits == 1 and signed:
            bad |= flat == 0
        if bad.any():
            i = int(np.argmax(bad))
            allowed = "-1 or +1" if bits == 1 and signed else f"[{lo}, {hi}]"
            raise ArtifactError(
                f"cannot pack value {int(flat[i])} (at flat index {i}; {int(bad.sum())} value(s) "
                f"out of range, min {int(flat.min())}, max {int(flat.max())}) as "
                f"{'signed' if signed else 'unsigned'} {bits}-bit: allowed {allowed}. "
                "Clamp or requantize to this width first."
            )
    if bits == 1 and signed:
        return (flat > 0).astype(np.uint8)
    return (flat & ((1 << bits) - 1)).astype(np.uint8)


def pack(q: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Pack integer values of width ``bits`` into a 1-D uint8 buffer (layout: module docstring).

    Raises ``ArtifactError`` if a value does not fit the width/signedness and ``RecipeError`` for
    a width outside 1..8. The shape is not stored: keep it beside the buffer.
    """
    bits = _check_bits(bits)
    codes = _codes(q, bits, signed)
    n = codes.size
    if 8 % bits == 0:  # 1, 2, 4, 8: whole elements per byte, shift-or them together
        per = 8 // bits
        padded = np.zeros(-(-n // per) * per, np.uint8)
        padded[:n] = codes
        lanes = padded.reshape(-1, per)
        out = np.zeros(lanes.shape[0], np.uint8)
        for j in range(per):
            out |= lanes[:, j] << np.uint8(j * bits)
        return out
    # 3, 5, 6, 7: general little-endian bit stream
    bitplanes = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits]  # (n, bits)
    return np.packbits(bitplanes.reshape(-1), bitorder="little")


def unpack(packed: np.ndarray, bits: int, signed: bool, count_or_shape: int | tuple[int, ...]) -> np.ndarray:
    """Inverse of ``pack``: ``count_or_shape`` values (an int, or a shape to reshape to).

    Returns int8 values (``unpacked_dtype``: uint8 only for unsigned 8-bit). The buffer must be
    uint8 and exactly ``packed_nbytes(count, bits)`` long, else ``ArtifactError``.
    """
    bits = _check_bits(bits)
    if isinstance(count_or_shape, (int, np.integer)):
        shape: tuple[int, ...] = (int(count_or_shape),)
    else:
        shape = tuple(int(d) for d in count_or_shape)
    if any(d < 0 for d in shape):
        raise ArtifactError(f"cannot unpack to negative shape {shape}")
    n = int(np.prod(shape, dtype=np.int64))
    buf = np.asarray(packed)
    if buf.dtype != np.uint8:
        raise ArtifactError(f"packed data must be uint8 bytes, got dtype {buf.dtype}")
    buf = buf.reshape(-1)
    need = packed_nbytes(n, bits)
    if buf.size != need:
        raise ArtifactError(
            f"packed buffer has {buf.size} bytes but {n} values of {bits} bits need {need}; "
            "the artifact is truncated or its shape/bit width is wrong"
        )
    if 8 % bits == 0:
        per = 8 // bits
        shifts = (np.arange(per, dtype=np.uint8) * np.uint8(bits))[None, :]
        codes = ((buf[:, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)[:n]
    else:
        stream = np.unpackbits(buf, bitorder="little", count=n * bits).reshape(n, bits)
        codes = np.packbits(stream, axis=1, bitorder="little").reshape(-1)
    codes = codes.astype(np.int16)
    if bits == 1 and signed:
        vals = 2 * codes - 1
    elif signed:
        vals = np.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)
    else:
        vals = codes
    return vals.astype(unpacked_dtype(bits, signed)).reshape(shape)


def packed_rows_nbytes(row_size: int, widths) -> int:
    """Bytes ``pack_rows`` writes: one width byte per channel plus each row packed at its width."""
    return len(widths) + sum(packed_nbytes(row_size, int(b)) for b in widths)


def pack_rows(q: np.ndarray, widths) -> np.ndarray:
    """Pack each output channel ``q[c]`` (signed) at its own width ``widths[c]`` (layout: module docstring)."""
    q = np.asarray(q)
    w = [_check_bits(b) for b in np.asarray(widths).reshape(-1).tolist()]
    if q.ndim < 1 or len(w) != q.shape[0]:
        raise ArtifactError(f"need one width per output channel: {len(w)} widths for a tensor of shape {q.shape}")
    parts = [np.asarray(w, np.uint8)]
    for c, bits in enumerate(w):
        try:
            parts.append(pack(q[c], bits, signed=True))
        except ArtifactError as e:
            raise ArtifactError(f"channel {c} ({bits}-bit): {e}") from None
    return np.concatenate(parts)


def unpack_rows(packed: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``pack_rows``: (int8 values of ``shape``, the per-channel widths read from the buffer).

    ``ArtifactError`` if the buffer is not uint8, a width is outside 1..8, or the length is not
    exactly what the widths need (a truncated, padded or mis-described buffer).
    """
    shape = tuple(int(d) for d in shape)
    buf = np.asarray(packed)
    if buf.dtype != np.uint8:
        raise ArtifactError(f"packed data must be uint8 bytes, got dtype {buf.dtype}")
    buf = buf.reshape(-1)
    if len(shape) < 1 or any(d < 0 for d in shape):
        raise ArtifactError(f"cannot unpack per-channel rows to shape {shape}")
    C, row = shape[0], int(np.prod(shape[1:], dtype=np.int64))
    if buf.size < C:
        raise ArtifactError(f"packed buffer has {buf.size} bytes, fewer than the {C} per-channel width bytes")
    widths = buf[:C].astype(np.int64)
    bad = np.flatnonzero((widths < 1) | (widths > MAX_BITS))
    if bad.size:
        c = int(bad[0])
        raise ArtifactError(f"channel {c} has width {int(widths[c])} in the packed header; widths are 1..{MAX_BITS} bits")
    need = packed_rows_nbytes(row, widths)
    if buf.size != need:
        raise ArtifactError(f"packed buffer has {buf.size} bytes but {C} channels of {row} values at their widths "
                            f"need {need}; the artifact is truncated or its widths/shape are wrong")
    out = np.empty((C, row), np.int8)
    pos = C
    for c, bits in enumerate(widths.tolist()):
        n = packed_nbytes(row, bits)
        out[c] = unpack(buf[pos : pos + n], bits, True, row)
        pos += n
    return out.reshape(shape), widths
