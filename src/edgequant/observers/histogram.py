"""Fixed-size streaming histograms on a power-of-two grid, shared by the histogram observers.

Each channel keeps ``bins`` counts over ``[o * 2^e, (o + bins) * 2^e)``: the bin width is a power
of two ``2^e`` and the window starts at an integer multiple ``o`` of it. When new data falls
outside, the width doubles (as often as needed) and the window slides; because every coarser grid
is a subset of the finer one's edges, old bins merge *exactly* into new ones. The width is always
the smallest power of two whose window covers the data seen so far (and 0), so the final histogram
depends only on the data, not on how it was split into batches: streaming many batches gives
bit-for-bit the histogram of one big batch. The data occupies between about half and all of the
bins (resolution ``bins/2`` or better); memory is ``C * bins`` floats whatever the batch count.
"""
from __future__ import annotations

import numpy as np

E_FLOOR = -160  # smallest bin width exponent (all-zero data); float32 subnormals start at 2^-149
REL_BITS = 40  # the width is at least max|x| * 2^-40, so window offsets stay exact in int64


class StreamingHistogram:
    """``C`` independent histograms of ``bins`` counts (``C = 1`` per tensor).

    ``update(v)`` takes ``v`` of shape (N, C). ``counts`` is (C, bins) float64 (exact integers),
    ``exp``/``offset`` are (C,) int64: channel ``c``'s bin ``j`` is
    ``[(offset[c] + j) * 2^exp[c], (offset[c] + j + 1) * 2^exp[c])``. ``vmin``/``vmax`` are the
    exact extremes of the data (the window also contains 0).
    """

    def __init__(self, channels: int, bins: int = 2048) -> None:
        if bins < 2:
            raise ValueError(f"a histogram needs at least 2 bins, got {bins}")
        self.channels = channels
        self.bins = bins
        self.counts = np.zeros((channels, bins), np.float64)  # (C, B)
        self.exp = np.full(channels, E_FLOOR, np.int64)  # (C,)
        self.offset = np.zeros(channels, np.int64)  # (C,)
        self.vmin = np.full(channels, np.inf)  # (C,)
        self.vmax = np.full(channels, -np.inf)  # (C,)

    # -- geometry -----------------------------------------------------------------------------
    def width(self) -> np.ndarray:
        """Bin width per channel, (C,) float64."""
        return np.ldexp(1.0, self.exp)

    def edges(self) -> np.ndarray:
        """Bin edges, (C, bins + 1) float64 (exact)."""
        j = np.arange(self.bins + 1, dtype=np.int64)
        return np.ldexp((self.offset[:, None] + j[None, :]).astype(np.float64), self.exp[:, None])

    def _fits(self, e: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.floor(np.ldexp(hi, -e)) - np.floor(np.ldexp(lo, -e)) <= self.bins - 1

    def _target_exp(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Smallest exponent >= the current one whose window holds [lo, hi] (lo <= 0 <= hi)."""
        amax = np.maximum(-lo, hi)
        mag = np.where(amax > 0, np.frexp(np.where(amax > 0, amax, 1.0))[1], E_FLOOR)
        e = np.maximum(self.exp, np.maximum(mag - REL_BITS, E_FLOOR))
        span = hi - lo
        # a first guess from the span, then step up until the window (aligned to 2^e) fits
        guess = np.where(span > 0, np.ceil(np.log2(np.where(span > 0, span, 1.0) / self.bins)), E_FLOOR)
        e = np.maximum(e, guess.astype(np.int64) - 1)
        while True:
            bad = ~self._fits(e, lo, hi)
            if not bad.any():
                return e
            e = e + bad

    # -- streaming ----------------------------------------------------------------------------
    CHUNK_ELEMENTS = 1 << 20  # values binned per pass (an ImageNet map batch is ~10M)

    def update(self, v: np.ndarray) -> None:
        """Add samples ``v`` of shape (N, C)."""
        v = np.asarray(v, np.float64)
        if v.size == 0:
            return
        bmin, bmax = v.min(axis=0), v.max(axis=0)
        self.vmin = np.minimum(self.vmin, bmin)
        self.vmax = np.maximum(self.vmax, bmax)
        lo = np.minimum(self.vmin, 0.0)
        hi = np.maximum(self.vmax, 0.0)
        e_new = self._target_exp(lo, hi)
        o_new = np.floor(np.ldexp(lo, -e_new)).astype(np.int64)
        if np.any(e_new != self.exp) or np.any(o_new != self.offset):
            self._rebin(e_new, o_new)
        base = np.arange(self.channels, dtype=np.int64)[None, :] * self.bins - o_new[None, :]
        rows = max(1, self.CHUNK_ELEMENTS // max(self.channels, 1))  # bounded int64 temporaries on large maps
        for i in range(0, v.shape[0], rows):
            idx = np.floor(np.ldexp(v[i : i + rows], -e_new[None, :])).astype(np.int64)  # (rows, C)
            idx += base
            self.counts += np.bincount(idx.reshape(-1), minlength=self.channels * self.bins).reshape(
                self.channels, self.bins
            )

    def _rebin(self, e_new: np.ndarray, o_new: np.ndarray) -> None:
        """Merge the bins onto the coarser grid (e_new >= exp): exact, edges are nested."""
        j = np.arange(self.bins, dtype=np.int64)
        shift = (e_new - self.exp)[:, None]  # (C, 1) >= 0
        new_idx = np.right_shift(self.offset[:, None] + j[None, :], shift) - o_new[:, None]  # (C, B)
        nz = self.counts > 0
        flat = new_idx + np.arange(self.channels, dtype=np.int64)[:, None] * self.bins
        merged = np.bincount(flat[nz], weights=self.counts[nz], minlength=self.channels * self.bins)
        self.counts = merged.reshape(self.channels, self.bins)
        self.exp, self.offset = e_new.astype(np.int64), o_new.astype(np.int64)

    # -- queries ------------------------------------------------------------------------------
    def quantile(self, q: float) -> np.ndarray:
        """The ``q``-quantile (0 <= q <= 1) per channel, (C,): linear within a bin, clamped to the
        exact data extremes."""
        cum = np.cumsum(self.counts, axis=1)  # (C, B)
        total = cum[:, -1]
        target = q * total
        k = np.array([np.searchsorted(cum[c], target[c], side="left") for c in range(self.channels)])
        k = np.minimum(k, self.bins - 1)
        before = np.where(k > 0, cum[np.arange(self.channels), np.maximum(k - 1, 0)], 0.0)
        inbin = self.counts[np.arange(self.channels), k]
        frac = np.where(inbin > 0, (target - before) / np.where(inbin > 0, inbin, 1.0), 0.0)
        w = self.width()
        left = np.ldexp((self.offset + k).astype(np.float64), self.exp)
        return np.clip(left + np.clip(frac, 0.0, 1.0) * w, self.vmin, self.vmax)

    def channel(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Counts (B,) and edges (B+1,) of channel ``c`` trimmed to its non-empty bins."""
        nz = np.nonzero(self.counts[c])[0]
        first, last = nz[0], nz[-1]
        j = np.arange(first, last + 2, dtype=np.int64)
        edges = np.ldexp((self.offset[c] + j).astype(np.float64), int(self.exp[c]))
        return self.counts[c, first : last + 1], edges

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.counts, self.exp, self.offset, self.vmin, self.vmax))
