"""ACIQ: analytic clipping for integer quantization (Banner et al., arXiv 1810.05723).

Fit a Laplace(mu, b) or Gaussian(mu, sigma) to the tensor and clip at the ``alpha`` that minimises
the paper's expected error of an ``M``-bit uniform quantizer over ``[-alpha, alpha]``::

    Laplace:  E[(X - Q(X))^2] ~= 2 b^2 exp(-alpha/b)                                   + alpha^2 / (3 * 4^M)
    Gaussian: E[(X - Q(X))^2] ~= (alpha^2 + s^2)(1 - erf(alpha/(s*sqrt 2)))
                                   - sqrt(2/pi) alpha s exp(-alpha^2/(2 s^2))          + alpha^2 / (3 * 4^M)

(clipping error of both tails + rounding noise ``Delta^2/12`` with ``Delta = 2 alpha / 2^M``). The
optimum is a fixed ratio ``alpha*/b`` (``alpha*/sigma``) per bit width: Laplace 1.86, 2.83, 3.89,
5.03, 6.20, 7.41, 8.64, 9.89 and Gaussian 1.24, 1.71, 2.15, 2.55, 2.93, 3.28, 3.61, 3.92 for 1..8
bits. ``clip_ratio`` solves the stationarity condition numerically for any width, so no table is
trusted; ``tests/test_lowbit.py`` re-derives the published tables from the MSE expression.

Rules (as in the paper's reference code): ``b = mean|x - mean(x)|``, ``sigma`` the standard
deviation. A non-negative tensor (post-ReLU) spends all ``2^M`` levels on ``[0, alpha]``, the
resolution of an ``M+1``-bit quantizer of the mirrored distribution, so it uses ``alpha*`` of
``M+1`` bits. Signed tensors clip ``[max(min, mu - alpha), min(max, lo + 2 alpha)]`` (symmetric
settings: ``|mu| + alpha``). The clip never exceeds the data's min/max. ``dist="auto"`` picks, per
channel, the model with the higher likelihood of the data: with these fits the mean
log-likelihoods are ``-log(2b) - 1`` (Laplace) and ``-log(2 pi e sigma^2)/2`` (Gaussian).

Weights are data-free: one ``update`` with the weight tensor (``axis=0`` per output channel).
Activations stream: count, sum and sum of squares are exact; ``sum|x - mu|`` is read from the
exact power-of-two streaming histogram (samples uniform inside a bin), or computed exactly when
everything arrived in a single ``update`` of at most ``exact_max`` values per channel.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..errors import RecipeError
from ..qmath import qrange
from .base import Observer, register_observer
from .histogram import StreamingHistogram

DISTS = ("laplace", "gauss", "auto")
GRIDS = ("paper", "exact")


def _laplace_grad(a: float, bits: int) -> float:
    """d/d alpha of the Laplace MSE with b = 1 (increasing in alpha: one root)."""
    return -2.0 * math.exp(-a) + 2.0 * a / (3.0 * 4.0**bits)


def _gauss_grad(a: float, bits: int) -> float:
    """d/d alpha of the Gaussian MSE with sigma = 1: 2a*Q - 2*sqrt(2/pi)*phi-term + rounding."""
    tail = 1.0 - math.erf(a / math.sqrt(2.0))
    return 2.0 * a * tail - 2.0 * math.sqrt(2.0 / math.pi) * math.exp(-a * a / 2.0) + 2.0 * a / (3.0 * 4.0**bits)


@lru_cache(maxsize=None)
def clip_ratio(bits: int, dist: str) -> float:
    """``alpha*/b`` (Laplace) or ``alpha*/sigma`` (Gaussian) for a ``bits``-bit quantizer.

    The root of the MSE's derivative by bisection (the MSE is unimodal in alpha: the gradient is
    negative at 0 and positive for large alpha).
    """
    if dist not in ("laplace", "gauss"):
        raise RecipeError(f"ACIQ distribution must be 'laplace' or 'gauss', got {dist!r}")
    if not 0 <= bits <= 32:
        raise RecipeError(f"ACIQ clip ratio is defined for 0..32 bits, got {bits}")
    grad = _laplace_grad if dist == "laplace" else _gauss_grad
    lo, hi = 1e-6, 1.0
    while grad(hi, bits) < 0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if grad(mid, bits) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _sq_err_integral(dist: str, u: np.ndarray, v: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``int_u^v (x - c)^2 f(x) dx`` for the unit one-sided density ``f`` on x >= 0 (both tails of
    the symmetric Laplace(b=1) / N(0, 1) folded onto the half line), closed form."""
    u, v = np.minimum(u, 1e3), np.minimum(v, 1e3)  # +inf: the density is exactly 0 in float64 there
    if dist == "laplace":  # f = exp(-x); antiderivative -exp(-x) ((x-c)^2 + 2(x-c) + 2)
        def F(x):
            return -np.exp(-x) * ((x - c) ** 2 + 2 * (x - c) + 2)
    else:  # f = 2 phi(x); int x^2 phi = Phi - x phi, int x phi = -phi
        from scipy.special import ndtr

        def F(x):
            phi = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
            return 2 * ((ndtr(x) - x * phi) + 2 * c * phi + c * c * ndtr(x))
    return F(v) - F(u)


def grid_mse(alpha: float, qmax: int, dist: str) -> float:
    """Exact expected squared error of the symmetric mid-tread grid ``{k alpha/qmax : |k| <= qmax}``
    (round to nearest, clip beyond alpha) on a unit Laplace / Gaussian."""
    d = alpha / qmax
    k = np.arange(qmax + 1, dtype=np.float64)
    u = np.maximum(k - 0.5, 0.0) * d
    v = np.where(k < qmax, (k + 0.5) * d, np.inf)
    return float(np.sum(_sq_err_integral(dist, u, v, k * d)))


@lru_cache(maxsize=None)
def exact_clip_ratio(qmax: int, dist: str) -> float:
    """``alpha*/b`` (``alpha*/sigma``) minimising the exact error of the integer grid actually used:
    ``qmax`` levels each side of zero (narrow symmetric weights: ``qmax = 2^(M-1) - 1``).

    The paper's expression models ``2^M`` bins with uniform rounding noise; that is accurate at
    4+ bits (4.82 vs 5.03 at 4 bits, 9.88 vs 9.89 at 8) but not for the 3-level 2-bit grid, whose
    best Laplace clip is ``2.0 b`` rather than ``2.83 b``. A scan then golden-section refinement.
    """
    if dist not in ("laplace", "gauss"):
        raise RecipeError(f"ACIQ distribution must be 'laplace' or 'gauss', got {dist!r}")
    if qmax < 1:
        raise RecipeError(f"the exact ACIQ grid needs at least one level each side of zero, got qmax={qmax}")
    cands = np.linspace(0.05, 40.0, 800)
    errs = [grid_mse(a, qmax, dist) for a in cands]
    i = int(np.argmin(errs))
    lo, hi = cands[max(i - 1, 0)], cands[min(i + 1, len(cands) - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if grid_mse(a, qmax, dist) <= grid_mse(b, qmax, dist):
            hi = b
        else:
            lo = a
    return 0.5 * (lo + hi)


def fit_loglik(b: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean log-likelihood of the data under its Laplace(mu, b) and Gaussian(mu, sigma) fits."""
    with np.errstate(divide="ignore"):
        return -np.log(2.0 * b) - 1.0, -0.5 * np.log(2.0 * math.pi * math.e * sigma**2)


def mean_abs_dev_from_hist(counts: np.ndarray, edges: np.ndarray, mu: float) -> float:
    """``sum|x - mu|`` of histogram data, samples uniform inside each bin (exact integral)."""
    a, b = edges[:-1], edges[1:]
    width = b - a
    inside = (a < mu) & (mu < b)
    # a bin wholly on one side: its samples' mean distance is |centre - mu|
    d = np.where(a >= mu, (a + b) / 2 - mu, np.where(b <= mu, mu - (a + b) / 2, 0.0))
    # the bin holding mu: integral of |x - mu| over a uniform density
    d_in = np.where(inside, ((b - mu) ** 2 + (mu - a) ** 2) / (2 * np.where(width > 0, width, 1.0)), 0.0)
    return float(np.sum(counts * (d + d_in)))


@register_observer("aciq")
class ACIQObserver(Observer):
    """Analytic clip from a Laplace / Gaussian fit (``dist``: "laplace", "gauss" or "auto")."""

    def __init__(self, dist: str = "laplace", grid: str = "paper", bins: int = 2048, exact_max: int = 1 << 16,
                 **kw) -> None:
        super().__init__(**kw)
        if dist not in DISTS:
            raise RecipeError(f"ACIQ dist must be one of {DISTS}, got {dist!r}")
        if grid not in GRIDS:
            raise RecipeError(f"ACIQ grid must be one of {GRIDS}, got {grid!r}")
        self.dist = dist
        self.grid = grid
        self.bins = bins
        self.exact_max = exact_max
        self.hist: StreamingHistogram | None = None
        self.data: np.ndarray | None = None  # (N, C) the single first batch while it is the only one
        self.shift: np.ndarray | None = None  # (C,) moments are taken about this (first batch mean)
        self.n = self.s1 = self.s2 = None

    def _update(self, x: np.ndarray) -> None:
        v = self.channels_last(x).astype(np.float64)  # (N, C)
        if self.hist is None:
            self.hist = StreamingHistogram(v.shape[1], self.bins)
            self.shift = v.mean(axis=0)
            self.n = np.zeros(v.shape[1])
            self.s1 = np.zeros(v.shape[1])
            self.s2 = np.zeros(v.shape[1])
        self.hist.update(v)
        d = v - self.shift
        self.n += v.shape[0]
        self.s1 += d.sum(axis=0)
        self.s2 += (d * d).sum(axis=0)
        keep = self.count == 0 and v.shape[0] <= self.exact_max
        self.data = v if keep else None

    # -- the fit ------------------------------------------------------------------------------
    def stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mu, b, sigma) per channel: mean, mean absolute deviation about the mean, std."""
        m1 = self.s1 / self.n
        mu = self.shift + m1
        sigma = np.sqrt(np.maximum(self.s2 / self.n - m1 * m1, 0.0))
        if self.data is not None:
            b = np.mean(np.abs(self.data - mu), axis=0)
        else:
            b = np.array([mean_abs_dev_from_hist(*self.hist.channel(c), mu[c]) if self.n[c] else 0.0
                          for c in range(self.hist.channels)]) / self.n
        return mu, b, sigma

    def chosen_dist(self) -> np.ndarray:
        """Per channel: "laplace" or "gauss" (``auto`` compares the fits' likelihoods)."""
        C = self.hist.channels
        if self.dist != "auto":
            return np.full(C, self.dist)
        _, b, sigma = self.stats()
        ll_lap, ll_gauss = fit_loglik(b, sigma)
        return np.where(ll_lap >= ll_gauss, "laplace", "gauss")

    def alpha(self) -> np.ndarray:
        """Clip half-width ``alpha`` per channel (``alpha*`` ratio times b or sigma)."""
        mu, b, sigma = self.stats()
        nonneg = (self.hist.vmin >= 0) | (not self.signed)
        dists = self.chosen_dist()
        out = np.empty_like(b)
        exact = self.grid == "exact" and self.symmetric and self.signed
        for c in range(len(b)):
            if exact and not nonneg[c]:
                ratio = exact_clip_ratio(qrange(self.bits, True, self.narrow)[1], str(dists[c]))
            else:
                ratio = clip_ratio(self.bits + 1 if nonneg[c] else self.bits, str(dists[c]))
            out[c] = ratio * (b[c] if dists[c] == "laplace" else sigma[c])
        return out

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        vmin, vmax = self.hist.vmin, self.hist.vmax
        mu, _, _ = self.stats()
        a = self.alpha()
        flat = a <= 0  # constant channel: nothing to fit, keep its value
        nonneg = (vmin >= 0) | (not self.signed)
        if self.symmetric:
            c = np.minimum(np.maximum(-vmin, vmax), np.abs(mu) + a)
            c = np.where(flat, np.maximum(-vmin, vmax), c)
            lo, hi = np.where(nonneg, 0.0, -c), c
        else:
            lo_s = np.maximum(vmin, mu - a)
            hi_s = np.minimum(vmax, lo_s + 2 * a)
            lo_p = np.maximum(vmin, 0.0)
            hi_p = np.minimum(vmax, lo_p + a)
            lo = np.where(flat, vmin, np.where(nonneg, lo_p, lo_s))
            hi = np.where(flat, vmax, np.where(nonneg, hi_p, hi_s))
        if self.axis is None:
            return lo[0], hi[0]
        return lo, hi


for _d in ("laplace", "gauss", "auto"):
    # name-only variants so a recipe (TensorSpec.observer) can pick the distribution
    register_observer(f"aciq-{_d}")(type(f"ACIQ{_d.title()}Observer", (ACIQObserver,), {
        "__init__": (lambda d: lambda self, **kw: ACIQObserver.__init__(self, **{"dist": d, **kw}))(_d),
        "__doc__": f"ACIQ with dist={_d!r}.",
    }))
