"""GPTQ: one-shot weight rounding with second-order error compensation (Frantar et al., arXiv 2210.17323).

Per conv/linear, with ``X`` the layer's inputs on the calibration set (im2col'd patches for a
conv, produced by the *already quantized* preceding layers: the paper's sequential mode), GPTQ
minimises ``|| W X - W~ X ||^2`` column by column: it rounds column ``i`` to the grid and spreads
the error over the not-yet-rounded columns through the inverse Hessian ``H^-1`` of ``H = 2 X X^T``.
As in the reference code: dampening ``1%`` of the mean diagonal, the upper Cholesky factor of
``H^-1`` (one factorisation, no per-column inverse updates), lazy batch updates in blocks of 128
columns, optional act-order (columns in decreasing ``diag(H)``), and dead inputs (``H_ii = 0``)
set to zero weight. It is one pass over the data per layer and no optimisation loop, which is why
it takes minutes where AdaRound takes tens of minutes.

The grid is the recipe's: the base weight method's per-output-channel scale and integer bounds
(``pipeline.weight_grid``), so the integers drop into the same integer program as nearest
rounding. Grouped convs are solved per group (a batched Hessian per group), so a depthwise conv is
``C`` independent ``k*k``-column problems. A 1-bit channel (per-channel bit allocation) rounds to
the sign.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import RecipeError
from ..ir import Node

DAMP = 0.01
BLOCK = 128


def _groups(node: Node) -> int:
    return int(node.attrs.get("groups", 1)) if node.op == "conv" else 1


def patches(node: Node, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as GEMM columns, (G, K, M): group ``g``'s ``K`` inputs per output position,
    in the order of ``weight[g*R:(g+1)*R].reshape(R, K)`` (im2col for a conv)."""
    if node.op == "linear":
        if x.ndim != 2:
            raise RecipeError(f"{node.describe()}: GPTQ handles (N, C) linear inputs, got shape {tuple(x.shape)}")
        return x.t().unsqueeze(0)
    a = node.attrs
    if a.get("dims", 2) == 1 and x.ndim == 3:
        x = x.unsqueeze(2)
    t, bo, l, r = a["padding"]
    if (t, l) != (bo, r):
        x = F.pad(x, (l, r, t, bo))
        t = l = 0
    kernel = tuple(node.params["weight"].shape[2:]) or (1, 1)
    kernel = kernel if len(kernel) == 2 else (1,) + kernel
    g = _groups(node)
    if kernel == (1, 1) and tuple(a["stride"]) == (1, 1) and (t, l) == (0, 0) and g == 1:  # pointwise: no im2col
        return x.transpose(0, 1).reshape(1, x.shape[1], -1)
    cols = F.unfold(x, kernel, dilation=tuple(a["dilation"]), padding=(t, l), stride=tuple(a["stride"]))
    n, ck, m = cols.shape  # (N, C*kh*kw, L)
    return cols.reshape(n, g, ck // g, m).permute(1, 2, 0, 3).reshape(g, ck // g, n * m)


class Hessian:
    """``sum X X^T`` per group over the calibration batches fed to ``add`` (float32 products of one
    chunk, as the reference code, summed in float64 across chunks). A batch is split
    so that its im2col columns stay under ``chunk_bytes`` (a 3x3 conv's columns are 9x its input)."""

    chunk_bytes = 64 << 20

    def __init__(self, node: Node) -> None:
        self.node = node
        w = node.params["weight"]
        g = _groups(node)
        k = int(w[0].size)
        self.h = torch.zeros((g, k, k), dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        k = self.h.shape[0] * self.h.shape[1]
        per_sample = max(int(x[0].numel()) * max(k // max(x.shape[1], 1), 1) * 4, 1)
        step = max(self.chunk_bytes // per_sample, 1)
        for i in range(0, len(x), step):
            cols = patches(self.node, x[i : i + step].float())  # (G, K, M)
            if cols.shape[1] != self.h.shape[1]:
                raise RecipeError(f"{self.node.describe()}: {cols.shape[1]} inputs per group but the weight has "
                                  f"{self.h.shape[1]}")
            self.h += (cols @ cols.transpose(1, 2)).double()
            self.count += cols.shape[2]


def gptq(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
         binary: torch.Tensor | None = None, damp: float = DAMP, block: int = BLOCK, act_order: bool = False,
         label: str = "layer") -> torch.Tensor:
    """GPTQ integers for ``w`` (G, R, K) with Hessians ``h`` (G, K, K), per-row ``scale``/``lo``/``hi``
    (G, R) -- or a step per weight, ``scale`` (G, R, K), for group-wise scales (``lowbit/groups.py``;
    static groups fixed before the sweep, so act-order keeps them) -- and optional 1-bit rows ``binary``
    (G, R). Returns the integers (G, R, K) as float64. The factorisations run in float64, the column
    sweep in float32 (as the reference code)."""
    W = w.double().clone()
    H = h.double().clone()
    g, r, k = W.shape
    s, lo, hi = scale.double(), lo.double(), hi.double()
    s = s.unsqueeze(-1).expand(g, r, k) if s.ndim == 2 else s  # (G, R, K): the step of every weight
    binary = torch.zeros((g, r), dtype=torch.bool) if binary is None else binary
    idx = torch.arange(k)
    diag = H[:, idx, idx]
    dead = diag == 0  # inputs that are always zero: any weight fits them, use 0
    H[:, idx, idx] = torch.where(dead, torch.ones_like(diag), diag)
    W = W.masked_fill(dead.unsqueeze(1), 0.0)
    perm = None
    if act_order:
        perm = torch.argsort(H[:, idx, idx], dim=1, descending=True)  # (G, K)
        W = torch.gather(W, 2, perm.unsqueeze(1).expand(g, r, k))
        s = torch.gather(s, 2, perm.unsqueeze(1).expand(g, r, k))
        H = torch.gather(torch.gather(H, 1, perm.unsqueeze(2).expand(g, k, k)), 2, perm.unsqueeze(1).expand(g, k, k))
    mean_diag = H[:, idx, idx].mean(dim=1)
    H[:, idx, idx] += (damp * mean_diag).unsqueeze(1)
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)  # (G, K, K) upper
    except torch._C._LinAlgError as e:
        raise RecipeError(f"{label}: GPTQ's Hessian is not positive definite even with {damp:.0%} dampening ({e}); "
                          "raise the option gptq_damp or give more calibration samples") from None

    W, Hinv, s, lo, hi = W.float(), Hinv.float(), s.float(), lo.float(), hi.float()

    def rnd(col: torch.Tensor, step: torch.Tensor) -> torch.Tensor:  # (G, R) weights -> integers on the row grids
        q = torch.clamp(torch.round(col / step), lo, hi)
        return torch.where(binary, torch.where(col >= 0, 1.0, -1.0), q)

    Q = torch.zeros_like(W)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1 = W[:, :, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        H1 = Hinv[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = W1[:, :, i]
            step = s[:, :, i1 + i]
            q = rnd(col, step)
            Q[:, :, i1 + i] = q
            err = (col - q * step) / H1[:, i, i].unsqueeze(1)  # (G, R)
            W1[:, :, i:] -= err.unsqueeze(2) * H1[:, i, i:].unsqueeze(1)
            E1[:, :, i] = err
        W[:, :, i2:] -= E1 @ Hinv[:, i1:i2, i2:]
    if perm is not None:
        Q = torch.empty_like(Q).scatter_(2, perm.unsqueeze(1).expand(g, r, k), Q)
    return Q.double()


def gptq_node(node: Node, hess: Hessian, scale, lo, hi, binary=None, damp: float = DAMP, block: int = BLOCK,
              act_order: bool = False) -> torch.Tensor:
    """GPTQ integers for one conv/linear, shaped like its weight (float64 tensor of integers)."""
    w = torch.as_tensor(node.params["weight"])
    o = w.shape[0]
    g = hess.h.shape[0]
    if hess.count == 0:
        raise RecipeError(f"{node.describe()}: GPTQ saw no calibration inputs for this layer")
    if o % g:
        raise RecipeError(f"{node.describe()}: {o} output channels do not split into {g} groups")
    r = o // g
    as_gr = lambda v: torch.as_tensor(v).reshape(g, r)  # noqa: E731  (O,) -> (G, R): channel o = g*R + r
    b = None if binary is None else as_gr(binary).bool()
    steps = torch.as_tensor(scale)  # (O,) per channel, or (O, K) per weight (group-wise scales)
    steps = as_gr(steps) if steps.ndim == 1 else steps.reshape(g, r, -1)
    q = gptq(w.reshape(g, r, -1), hess.h, steps, as_gr(lo), as_gr(hi), b, damp, block, act_order,
             label=node.describe())
    return q.reshape(w.shape)

