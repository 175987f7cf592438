"""The exact integer GEMM/conv kernels equal true integer arithmetic."""
import numpy as np
import pytest
import torch

from edgequant.kernels import gemm


@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (64, 4608, 16), (33, 1024, 8), (20, 300, 24)])
@pytest.mark.parametrize("lo,hi", [(-128, 128), (-255, 256)])
def test_exact_matmul_equals_int64(m, k, n, lo, hi):
    rng = np.random.default_rng(m * k + n)
    a = rng.integers(lo, hi, (m, k))
    b = rng.integers(-127, 128, (k, n))
    a[0, :] = lo  # worst case sums
    b[:, 0] = -127
    for aa, bb in ((a, b), (a.astype(np.int8), b.astype(np.int8)) if hi <= 128 else (a, b)):
        np.testing.assert_array_equal(gemm.exact_matmul(aa, bb), a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("groups,stride,pad,dil", [(1, 1, (1, 1, 1, 1), 1), (2, 2, (0, 1, 2, 0), 1), (8, 1, (2, 2, 2, 2), 2), (1, 3, (0, 0, 0, 0), 1)])
def test_conv2d_exact(groups, stride, pad, dil):
    rng = np.random.default_rng(groups)
    x = rng.integers(-128, 128, (2, 8, 9, 11)).astype(np.int8)
    w = rng.integers(-127, 128, (8, 8 // groups, 3, 3)).astype(np.int8)
    got = gemm.conv2d(x, w, (stride, stride), pad, (dil, dil), groups, pad_value=5)
    t, b, l, r = pad
    xp = torch.nn.functional.pad(torch.from_numpy(x).double(), (l, r, t, b), value=5)
    ref = torch.nn.functional.conv2d(xp, torch.from_numpy(w).double(), None, stride, 0, dil, groups)
    np.testing.assert_array_equal(got, ref.numpy().astype(np.int64))
