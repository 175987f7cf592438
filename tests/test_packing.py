"""Packing of low-bit tensors: round trip, sizes, layouts, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgequant.errors import ArtifactError, EdgequantError, RecipeError
from edgequant.packing import pack, packed_nbytes, unpack, unpacked_dtype, value_range


@st.composite
def tensors(draw):
    bits = draw(st.integers(1, 8))
    signed = draw(st.booleans())
    lo, hi = value_range(bits, signed)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9))
    if bits == 1 and signed:
        elems = st.sampled_from([-1, 1])
    else:
        elems = st.integers(lo, hi)
    dtypes = [d for d in (np.int8, np.uint8, np.int16, np.int32, np.int64)
              if np.iinfo(d).min <= lo and hi <= np.iinfo(d).max]
    dtype = draw(st.sampled_from(dtypes))
    x = draw(hnp.arrays(dtype, shape, elements=elems))
    return x, bits, signed


@settings(max_examples=400, deadline=None)
@given(tensors())
def test_roundtrip_all_widths(case) -> None:
    x, bits, signed = case
    p = pack(x, bits, signed)
    assert p.dtype == np.uint8 and p.ndim == 1
    assert p.size == packed_nbytes(x.size, bits) == -(-x.size * bits // 8)
    y = unpack(p, bits, signed, x.shape)
    assert y.dtype == unpacked_dtype(bits, signed)
    assert y.shape == x.shape
    assert np.array_equal(y.astype(np.int64), x.astype(np.int64))
    y1 = unpack(p, bits, signed, x.size)  # count form
    assert np.array_equal(y1, y.reshape(-1))


@settings(max_examples=200, deadline=None)
@given(tensors())
def test_layout_is_one_lsb_first_bit_stream(case) -> None:
    """Element i is bits [i*b, (i+1)*b) of the little-endian stream; unused tail bits are 0."""
    x, bits, signed = case
    p = pack(x, bits, signed)
    stream = np.unpackbits(p, bitorder="little")
    flat = x.reshape(-1).astype(np.int64)
    codes = (flat > 0).astype(np.int64) if (bits == 1 and signed) else flat & ((1 << bits) - 1)
    for i, c in enumerate(codes):
        got = sum(int(stream[i * bits + k]) << k for k in range(bits))
        assert got == c
    assert not stream[flat.size * bits:].any()


def test_int4_low_nibble_first_like_onnx() -> None:
    assert pack(np.array([1, -2, 7]), 4, True).tolist() == [0xE1, 0x07]
    assert pack(np.array([3, 15]), 4, False).tolist() == [0xF3]
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    cases = [
        ("INT4", 4, True, [1, -2, 7, -8, 0]),
        ("UINT4", 4, False, [1, 15, 0, 9, 3]),
        ("INT2", 2, True, [1, -2, 0, -1, 1]),
        ("UINT2", 2, False, [3, 0, 2, 1, 3]),
    ]
    for name, bits, signed, vals in cases:
        if not hasattr(onnx.TensorProto, name):
            continue
        t = helper.make_tensor("t", getattr(onnx.TensorProto, name), [len(vals)], vals)
        # onnx's own packing (the int32_data it builds holds one packed byte per entry)
        ref = np.asarray(t.int32_data, np.int64).astype(np.uint8)
        assert pack(np.array(vals), bits, signed).tolist() == ref.tolist(), name
        assert unpack(ref, bits, signed, len(vals)).tolist() == vals, name


def test_int2_four_per_byte_and_binary_eight_per_byte() -> None:
    assert pack(np.array([1, -2, 0, -1]), 2, True).tolist() == [0b11_00_10_01]
    assert pack(np.array([-1, 1, 1, -1, -1, -1, -1, 1, 1]), 1, True).tolist() == [0b1000_0110, 0b1]
    assert unpack(np.array([0b1000_0110, 0b1], np.uint8), 1, True, 9).tolist() == [-1, 1, 1, -1, -1, -1, -1, 1, 1]


@pytest.mark.parametrize("bits,n,nbytes", [(1, 9, 2), (2, 5, 2), (3, 8, 3), (3, 3, 2), (4, 3, 2), (5, 8, 5), (6, 4, 3), (7, 8, 7), (8, 3, 3), (4, 0, 0)])
def test_packed_nbytes(bits, n, nbytes) -> None:
    assert packed_nbytes(n, bits) == nbytes


@pytest.mark.parametrize("bits,signed,bad", [
    (4, True, 8), (4, True, -9), (4, False, 16), (4, False, -1), (2, True, 2), (2, True, -3),
    (1, True, 0), (1, True, 2), (1, False, -1), (1, False, 2), (3, True, 4), (7, False, 128), (8, True, 128),
    (8, False, 256),
])
def test_out_of_range_is_a_clear_error(bits, signed, bad) -> None:
    with pytest.raises(ArtifactError, match=rf"cannot pack value {bad} .* {'signed' if signed else 'unsigned'} {bits}-bit"):
        pack(np.array([0 if not (bits == 1 and signed) else 1, bad]), bits, signed)


def test_bad_width_dtype_and_buffer_errors() -> None:
    for bits in (0, 9, 16, -1):
        with pytest.raises(RecipeError, match="1..8"):
            pack(np.zeros(3, np.int8), bits, True)
        with pytest.raises(RecipeError):
            packed_nbytes(3, bits)
    with pytest.raises(ArtifactError, match="integer"):
        pack(np.array([0.5, 1.0]), 4, True)
    with pytest.raises(ArtifactError, match="need 2"):
        unpack(np.zeros(3, np.uint8), 4, True, 4)
    with pytest.raises(ArtifactError, match="uint8"):
        unpack(np.zeros(2, np.int32), 4, True, 4)
    assert issubclass(ArtifactError, EdgequantError) and issubclass(RecipeError, EdgequantError)


def test_large_tensor_sizes() -> None:
    rng = np.random.default_rng(0)
    for bits in range(1, 9):
        for signed in (True, False):
            lo, hi = value_range(bits, signed)
            x = rng.integers(lo, hi + 1, 100_003)
            if bits == 1 and signed:
                x = np.where(x == 0, 1, x)
            p = pack(x, bits, signed)
            assert p.nbytes == (100_003 * bits + 7) // 8
            assert np.array_equal(unpack(p, bits, signed, x.shape), x)
