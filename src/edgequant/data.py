"""Built-in data: scikit-learn's real handwritten digits (8x8, 10 classes), ships offline.

Fixed split (seeded): 70% train / 30% test. Calibration samples come from the training split
only, so the test accuracy is never measured on data the quantizer saw.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

SPLIT_SEED = 0
TEST_FRACTION = 0.3


def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]  # (N, 1, 8, 8) in [0, 1]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(round(TEST_FRACTION * len(x)))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=batch_size,
                      shuffle=shuffle, generator=g)


def digits(batch_size: int = 128, calib_size: int = 512) -> tuple[DataLoader, DataLoader]:
    """(calib, test) DataLoaders of (x, y); x is (N, 1, 8, 8) float in [0, 1]."""
    xtr, ytr, xte, yte = _arrays()
    return _loader(xtr[:calib_size], ytr[:calib_size], batch_size), _loader(xte, yte, batch_size)


def digits_train(batch_size: int = 64, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """The whole training split (for training the built-in models and for QAT)."""
    xtr, ytr, _, _ = _arrays()
    return _loader(xtr, ytr, batch_size, shuffle, seed)
