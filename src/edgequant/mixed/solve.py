"""From summed per-layer noise to an estimated drop, and the integer program that picks widths.

Calibration: every program measured so far is a point (summed per-layer noise, measured drop).
The estimate is the monotone piecewise-linear envelope through them (running maximum of the
drops, linear in between, (0, 0) at the origin). Accuracy falls off convexly with noise, so
linear interpolation between measured points over-estimates the drop between them -- the safe
side. The noise allowance is where the envelope reaches the budget; beyond the noisiest
measured point nothing is extrapolated.

Widths: ``scipy.optimize.milp`` (HiGHS) over binary x[u, o] (unit u at option o), one option per
unit, minimising bytes (objective "size") or measured milliseconds (objective "latency", bytes as
the tie-break) subject to ``sum noise[u][o] x[u, o] <= allowance`` -- the integer-program form of
HAWQ-V3 / MCT, with measured rather than Hessian costs.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from .space import Assignment, Option


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Monotone non-decreasing (noise, drop) envelope, from (0, 0), sorted by noise."""
    pts = sorted([(0.0, 0.0)] + [(float(n), max(float(d), 0.0)) for n, d in points])
    out, top = [], 0.0
    for n, d in pts:
        top = max(top, d)
        if out and out[-1][0] == n:
            out[-1] = (n, top)
        else:
            out.append((n, top))
    return out


def estimate(points: list[tuple[float, float]], noise: float) -> float:
    """Estimated drop at ``noise`` (beyond the last point: the last point's drop, flagged by ``allowance``)."""
    env = envelope(points)
    xs, ys = [p[0] for p in env], [p[1] for p in env]
    return float(np.interp(noise, xs, ys))


def allowance(points: list[tuple[float, float]], budget: float) -> float:
    """The largest noise whose estimated drop is within ``budget``."""
    env = envelope(points)
    for (n0, d0), (n1, d1) in zip(env, env[1:]):
        if d1 > budget:
            return n0 if d1 == d0 else n0 + (n1 - n0) * (budget - d0) / (d1 - d0)
    return env[-1][0]


def solve(units: list[str], options: list[Option], noise: dict[str, dict[Option, float]],
          cost: dict[str, dict[Option, float]], tie: dict[str, dict[Option, float]] | None, limit: float,
          forbid: list[Assignment] = ()) -> Assignment | None:
    """The assignment minimising ``cost`` (then ``tie``) with summed noise <= ``limit``; None if infeasible.

    ``forbid``: assignments already tried (each excluded by a no-good cut).
    """
    U, O = len(units), len(options)
    idx = {(u, o): i * O + j for i, u in enumerate(units) for j, o in enumerate(options)}
    c = np.array([cost[u][o] for u in units for o in options], np.float64)
    if tie is not None:  # the tie-break's whole range weighs 1e-4 of the mean main cost of one unit
        t = np.array([tie[u][o] for u in units for o in options], np.float64)
        span = float(np.sum(np.max(t.reshape(U, O), 1) - np.min(t.reshape(U, O), 1))) or 1.0
        c = c + t * (1e-4 * float(np.mean(np.abs(c)) or 1.0) / span)
    scale = max(abs(limit), 1e-30)  # keep HiGHS's tolerances meaningful for tiny noises
    cons = []
    a_eq = np.zeros((U, U * O))
    for i in range(U):
        a_eq[i, i * O:(i + 1) * O] = 1.0
    cons.append(LinearConstraint(a_eq, 1.0, 1.0))
    if np.isfinite(limit):
        nz = np.array([[noise[u][o] / scale for u in units for o in options]])
        cons.append(LinearConstraint(nz, -np.inf, limit / scale * (1 + 1e-9)))
    for a in forbid:
        row = np.zeros((1, U * O))
        for u, o in a.items():
            row[0, idx[(u, tuple(o))]] = 1.0
        cons.append(LinearConstraint(row, -np.inf, U - 1))
    res = milp(c, constraints=cons, integrality=np.ones(U * O), bounds=Bounds(0, 1),
               options={"presolve": True, "time_limit": 60.0})
    if res.x is None or res.status not in (0,):
        return None
    x = np.round(res.x).astype(int)
    out: Assignment = {}
    for i, u in enumerate(units):
        j = int(np.argmax(x[i * O:(i + 1) * O]))
        out[u] = options[j]
    return out
