"""Reconstruction: learn the weight rounding of every conv/linear on calibration data.

Two objectives over the same walk of the graph's units (``blocks.find_units``), in order, each
unit reading the *quantized* model's activation at its entry (so errors of earlier units are
compensated downstream, as in both papers):

* ``"adaround"`` (Nagel et al., arXiv 2004.10568): layer by layer, minimise
  ``|| f(W x_q) - f(W~ x_q) ||^2`` -- the layer's (activated) output on the quantized model's input
  against the float model's output -- plus the rounding regulariser. Activations inside the
  objective stay in float; the layer input comes from the quantized model.
* ``"brecq"`` (Li et al., arXiv 2102.05426): the same over a whole residual / inverted-residual
  block (or a chain of up to ``max_layers`` layers), with every activation inside the block
  fake-quantized on the calibrated grid. ``qdrop = p`` (Wei et al., QDrop, arXiv 2203.05740)
  replaces each fake-quantized activation element, and each element of the block input, by its
  float value with probability ``p`` during training, which flattens the loss landscape the
  rounding is fitted to.

With ``"brecq"`` the activation steps inside each unit are learned too (``learn_act_scale``, on by
default, as in BRECQ's and QDrop's reference code): every fake-quantized activation of the unit
(the unit's output included, its entry excluded: that is the previous unit's output, already
fixed) gets a step ``s = s0 * exp(u)`` with ``s0`` the calibrated step, trained jointly with the
rounding by LSQ's straight-through gradient (Esser et al., arXiv 1902.08153: ``round(x/s) - x/s``
inside the range, ``qmin - z`` / ``qmax - z`` at the clips). The zero point stays the calibrated
integer: zero stays exactly representable without re-nudging, a post-ReLU grid keeps ``qmin`` at
real 0 (no level wasted below it), and the program's clamp bounds stay integers. The papers learn
``s`` itself with Adam at 4e-5 over 20k iterations; with a few hundred steps per unit we learn
``log s`` (a scale-free step, lr ``act_lr``) under the same cosine decay. When a unit is done its
learned steps replace the calibrated ones in the activation qparams (``ReconResult.act_qp``) that
the program is lowered with, and the sim's requantization shifts and int32 bias grids are
recomputed from them, so later units and ``q.run`` see the same grids.

The sim is the integer program's arithmetic in float: biases on the program's int32 grid and, with
``requant="gemmlowp"``, the double rounding of gemmlowp requantization (``requant_shifts``), so the
rounding is learned for what ``q.run`` computes (per layer bit-exact up to float32 ties; tests/test_reconstruct.py).

Loss normalisation follows BRECQ's reference code: squared error summed over channels and averaged
over samples and positions; regulariser weight ``lambda`` (0.01) on the sum over weights.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..calibrate import iter_batches
from ..errors import CalibrationError, RecipeError
from ..graph_exec import run_node
from ..heap import trim as trim_heap
from ..lowbit import groups
from ..ir import Graph, Node
from .. import qmath
from ..qmath import QParams, quantize_multiplier, round_half_away
from .adaround import LAMBDA, AdaRoundWeight, BetaSchedule
from .blocks import GEMM_OPS, Unit, find_units
from .cache import StoreSpace, TensorStore, map_stores
from .window import DEFAULT_WINDOW, Window, conv_window, crop, sample_window


PROBE = 5        # steps timed before a CPU budget (``cpu_budget``) sets the step count
MIN_STEPS = 50   # the CPU budget never cuts a layer / unit below this many steps
REPROBE = 50     # steps between re-estimates of a step's CPU cost under ``cpu_budget``
TRIM_EVERY = 2   # steps between giving the heap's free pages back (heap.trim): varying window sizes fragment it
STREAM_BYTES = 128 << 20  # live tensors of one streamed batch (``_Sim.stream_rows``)
STREAM_LIVE = 8           # float32 copies of the largest map a fake-quantized node holds at once


@dataclass(frozen=True)
class ReconConfig:
    """The knobs (recipe options of the same names; see ``pipeline.config_from_recipe``)."""

    method: str = "brecq"             # "adaround" | "brecq" | "gptq"
    iterations: int = 500             # per layer (adaround) or per unit (brecq): the budget knob
    batch_size: int = 32
    lr: float = 1e-3
    reg_lambda: float = LAMBDA
    qdrop: float = 0.0                # probability of dropping activation quantization (0: off)
    calib_samples: int = 1024
    max_layers: int = 3               # longest chain of plain layers reconstructed as one unit
    memory_mb: int = 256              # RAM for boundary tensors; beyond it they go to disk
    cache_dir: str | None = None
    seed: int = 0
    requant: str = "gemmlowp"         # how the sim rounds conv/linear outputs: as q.run's default, or "exact"
    learn_act_scale: bool | None = None  # learn activation steps inside each unit (None: on for brecq, off for adaround)
    act_lr: float = 4e-3              # Adam lr on log(step) of the activation quantizers
    damp: float = 0.01                # GPTQ: Hessian dampening, a fraction of its mean diagonal
    window: int = DEFAULT_WINDOW      # output positions per sample per step (window.py); 0: whole maps
    cpu_budget: float | None = None   # CPU-seconds of training per layer (adaround) / unit (brecq): fewer
    # steps where a step is costly (measured on the first PROBE steps); None: always ``iterations``
    act_order: bool = False           # GPTQ: round columns in decreasing Hessian diagonal
    sequential: bool = False          # GPTQ on transformers (gptq_graph.py): each layer's Hessian after the
    # rounding of the layers before it (one pass per stage of independent layers) instead of one pass


@dataclass
class UnitReport:
    unit: str
    layers: tuple[str, ...]
    loss_start: float
    loss_end: float
    seconds: float
    layer_seconds: dict[str, float] = field(default_factory=dict)  # per layer (AdaRound, GPTQ)
    iterations: int = 0               # steps for the unit (BRECQ); 0: GPTQ; AdaRound: see layer_iterations
    layer_iterations: dict[str, int] = field(default_factory=dict)  # AdaRound: steps per layer
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer (AdaRound) / unit (BRECQ) ->
    # the (rows, cols) output window of its steps, where smaller than the map (window.py)


@dataclass
class ReconResult:
    """Learned integers per node: name -> (int8 weights, per-channel scale (O,), weight bits)."""

    weights: dict[str, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)
    act_qp: dict[str, QParams] = field(default_factory=dict)  # learned activation grids (name -> qparams)
    units: list[UnitReport] = field(default_factory=list)
    seconds: float = 0.0
    disk_bytes_peak: int = 0


@dataclass
class WeightGrid:
    """Where one layer's integers may lie: the weight method's scale and per-channel bounds."""

    scale: np.ndarray   # (O,) float32
    lo: np.ndarray      # (O,)
    hi: np.ndarray      # (O,)
    bits: int
    extra: dict = field(default_factory=dict)  # the base method's instruction attrs (bit allocation)

    def steps(self, shape: tuple[int, ...]) -> np.ndarray:
        """The real step of every weight of a ``shape`` weight: ``scale`` (O,) per channel, or (O, K)
        with group-wise scales (``lowbit/groups.py``: the channel scale times the group's multiplier)."""
        mult = self.extra.get(groups.ARRAY)
        if mult is None:
            return self.scale
        return groups.column_scale(self.scale, mult, int(np.prod(shape[1:])), self.extra[groups.ATTR])


def _double_rounds(qp: QParams) -> bool:
    """Whether the program's gemmlowp requantization into this tensor rounds twice: the engine's
    rule (``qmath.requant_rounding``: outputs narrower than 8 bits round once); an engine without
    the rule rounds twice everywhere."""
    rule = getattr(qmath, "requant_rounding", None)
    return rule is None or rule(int(qp.bits)) != "single"


def requant_shifts(graph: Graph, act_qp: dict[str, QParams], grids: dict[str, "WeightGrid"]) -> dict[str, torch.Tensor]:
    """Per conv/linear in ``grids`` (and global mean), the right shift ``R`` (per output channel) of the program's
    gemmlowp requantization ``RoundingDivideByPOT(SRDHM(acc, M0), R)``: it rounds twice, first to
    ``1/2^R`` of an output step, then to the step. With 8-bit activations ``R`` is large and the
    first rounding is invisible; at 4 bits the multiplier ``s_in s_w / s_out`` is near 1/2..1/8, so
    ``R`` is 1..3 and the first rounding moves up to a quarter of the outputs by one step. The sim
    reproduces it where the program does it (``_double_rounds``) so that the rounding is learned for
    the arithmetic ``q.run`` really does (the same ``real`` as ``lower.gemm``)."""
    out = {}
    by = graph.by_name()
    for n in graph.nodes:
        if not n.inputs or n.inputs[0] not in act_qp or n.name not in act_qp:
            continue
        s_in, s_out = np.float32(act_qp[n.inputs[0]].scale), np.float32(act_qp[n.name].scale)
        if n.name in grids:
            real = float(s_in) * grids[n.name].scale.astype(np.float64) / float(s_out)
            shape = (1, -1) + (1,) * (len(n.shape) - 2)
        elif n.op == "mean":  # lower._s_mean: sum(q - zp) * s_in / (count * s_out)
            real = np.array([float(s_in) / (int(np.prod(by[n.inputs[0]].shape[2:])) * float(s_out))])
            shape = (1,)
        else:
            continue
        if not _double_rounds(act_qp[n.name]):
            continue
        _, shift = quantize_multiplier(real)
        r = np.maximum(-np.asarray(shift, np.int64), 0).reshape(-1)
        if r.any():
            out[n.name] = torch.as_tensor(np.exp2(r), dtype=torch.float32).reshape(shape)
    return out


class _Sim:
    """Float execution of graph nodes with optional fake-quantized activations (the program's
    grid, ties away from zero as in the gemmlowp program, and its double rounding where
    ``shifts`` says so) and per-node weight substitutes."""

    def __init__(self, graph: Graph, act_qp: dict[str, QParams], shifts: dict[str, torch.Tensor] | None = None,
                 grids: dict[str, "WeightGrid"] | None = None) -> None:
        self.act_qp = act_qp
        self.shifts = shifts or {}
        self.log_steps: dict[str, torch.Tensor] = {}  # activations whose step is being learned: log(s / s0)
        self.params = {n.name: {k: torch.as_tensor(v, dtype=torch.float32) for k, v in n.params.items()}
                       for n in graph.nodes if n.params}
        self.graph, self.grids = graph, grids
        self.shapes = {n.name: tuple(n.shape) for n in graph.nodes}
        self.qparams: dict[str, dict] = {}
        self.grid_biases()

    def grid_biases(self) -> None:
        """Quantized-model params: each bias on the program's int32 grid ``s_in * s_w``."""
        self.qparams = {}
        for n in self.graph.nodes:
            if self.grids and n.name in self.grids and n.inputs[0] in self.act_qp and "bias" in n.params:
                step = np.float32(self.act_qp[n.inputs[0]].scale) * self.grids[n.name].scale.astype(np.float32)
                b = np.round(n.params["bias"].astype(np.float64) / step) * step
                self.qparams[n.name] = {**self.params[n.name], "bias": torch.as_tensor(b, dtype=torch.float32)}

    def stream_rows(self, names) -> int:
        """Samples per batch of a streamed (no-grad) pass over tensors ``names``: live memory stays
        near ``STREAM_BYTES`` (the largest map x ``STREAM_LIVE`` copies: input, output and the
        fake-quant temporaries), so a 240x240 net's first blocks stream a few samples at a time."""
        per = max(int(np.prod(self.shapes[k][1:])) for k in names) * 4 * STREAM_LIVE
        return int(max(1, min(128, STREAM_BYTES // max(per, 1))))

    def learn_steps(self, names) -> list[torch.Tensor]:
        """Start learning the steps of these activations (from the calibrated ones)."""
        self.log_steps = {k: torch.zeros((), requires_grad=True) for k in names if k in self.act_qp}
        return list(self.log_steps.values())

    def commit_steps(self) -> dict[str, QParams]:
        """Write the learned steps into ``act_qp`` (float32, zero point unchanged), stop learning them."""
        out = {}
        for k, u in self.log_steps.items():
            qp = self.act_qp[k]
            s = np.float32(float(qp.scale) * float(torch.exp(u.detach().double())))
            out[k] = dataclasses.replace(qp, scale=np.asarray(s, np.float32).reshape(np.shape(qp.scale)))
        self.act_qp.update(out)
        self.log_steps = {}
        return out

    def fq(self, name: str, y: torch.Tensor, drop: float, gen: torch.Generator | None) -> torch.Tensor:
        qp = self.act_qp.get(name)
        if qp is None:
            return y
        s, z = float(qp.scale), float(qp.zero_point)
        learn = name in self.log_steps
        if learn:
            s = s * torch.exp(self.log_steps[name])
        v = y / s
        if name in self.shifts:  # first rounding of the gemmlowp requantization, to 1/2^R of a step
            p = self.shifts[name]
            v = v + (round_half_away(v * p) / p - v).detach()
        r = round_half_away(v.detach())  # in the integer domain: 14.5 * s / s must stay a tie
        q = r + z
        inside = (q >= qp.qmin) & (q <= qp.qmax)
        k = torch.clamp(q, qp.qmin, qp.qmax) - z
        if learn:  # LSQ: d/dy = 1 inside, 0 outside; d/ds = round(v) - v inside, qmin - z / qmax - z outside
            q = torch.where(inside, (r + v - v.detach()) * s, k * s)
        else:
            out = k * s
            q = torch.where(inside, y + (out - y).detach(), out.detach())  # STE inside the range (as fake_quantize)
        if drop > 0:
            keep_float = torch.rand(y.shape, generator=gen) < drop
            q = torch.where(keep_float, y, q)
        return q

    def node(self, n: Node, args: list[torch.Tensor], weights: dict | None = None, quant: bool = False) -> torch.Tensor:
        """One node on its input tensors: the quantized model's (``quant``: int32-grid bias, fake-
        quantized output) or the float model's, with ``weights[n.name]`` substituted if given."""
        p = (self.qparams if quant else self.params).get(n.name) or self.params.get(n.name, {})
        if weights and n.name in weights:
            p = {**p, "weight": weights[n.name]}
        y = run_node(n, args, p)
        return self.fq(n.name, y, 0.0, None) if quant else y

    def run(self, nodes, entry: str, x: torch.Tensor, weights: dict | None = None, quant: bool = False,
            drop: float = 0.0, gen: torch.Generator | None = None, quant_last: bool = True,
            win: Window | None = None, keep: str | None = None) -> dict[str, torch.Tensor]:
        """The nodes from ``entry = x``; with ``win``, ``x`` is the entry's box and every tensor is
        computed on its box only (``window.plan``: the output box is exact). With ``keep`` (a tensor
        name), every other tensor is dropped after its last use: only ``keep`` is returned, and a
        streamed pass holds a few maps of the batch, not all of the unit's."""
        env = {entry: x}
        nodes = list(nodes)
        last = {a: i for i, n in enumerate(nodes) for a in n.inputs} if keep is not None else {}
        for k, n in enumerate(nodes):
            p = (self.qparams if quant else self.params).get(n.name) or self.params.get(n.name, {})
            if weights and n.name in weights:
                p = {**p, "weight": weights[n.name]}
            if win is None:
                y = run_node(n, [env[i] for i in n.inputs], p)
            elif n.op in ("conv", "pad"):
                a = n.inputs[0]
                y = conv_window(n, env[a], win.boxes[a], win.boxes[n.name], self.shapes[a], p)
            else:
                y = run_node(n, [crop(env[i], win.boxes[i], win.boxes[n.name]) for i in n.inputs], p)
            if quant and (quant_last or k < len(nodes) - 1):
                y = self.fq(n.name, y, drop, gen)
            for a in set(n.inputs):
                if last.get(a) == k and a != keep:
                    env.pop(a, None)
            env[n.name] = y
        return env


def _rec_loss(y: torch.Tensor, target: torch.Tensor, win: Window | None = None, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Squared error summed over channels, mean over samples and positions; on a window, the
    window's sum over the map's position count times ``win.scale`` (unbiased for the full map)."""
    d = (y - target).pow(2)
    if win is not None:
        return d.sum() * (win.scale / (d.shape[0] * int(np.prod(shape[2:]))))
    return d.sum(1).mean() if d.ndim > 1 else d.mean()


def initial_stores(space: StoreSpace, graph: Graph, sim: _Sim, calib, limit: int) -> tuple[TensorStore, TensorStore]:
    xs, n = [], 0
    for x in iter_batches(calib):
        xs.append(x.float())
        n += len(x)
        if n >= limit:
            break
    if n == 0:
        raise CalibrationError("reconstruction needs calibration data; the calibration set is empty")
    x = torch.cat(xs)[:limit]
    xf = TensorStore(space, tuple(x.shape))
    xq = TensorStore(space, tuple(x.shape))
    for i in range(0, len(x), 256):
        b = x[i : i + 256]
        xf.append(b)
        xq.append(sim.fq(graph.input, b, 0.0, None))
    return xf, xq


class _Trainer:
    def __init__(self, cfg: ReconConfig, sim: _Sim, progress) -> None:
        self.cfg, self.sim, self.progress = cfg, sim, progress
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.steps_done: list[int] = []  # steps of each fit (the CPU budget may cut them)

    def _sample(self, n: int) -> np.ndarray:
        return np.sort(self.rng.choice(n, size=min(self.cfg.batch_size, n), replace=False))

    def _window(self, nodes, entry: str) -> Window | None:
        return sample_window(list(nodes), entry, self.sim.shapes, self.cfg.window, self.rng)

    def window_of(self, nodes, entry: str) -> tuple[int, int] | None:
        """The (rows, cols) of this unit's steps, None on whole maps (for the report)."""
        from .window import window_shape, windowable

        shape = self.sim.shapes[list(nodes)[-1].name]
        if len(shape) != 4 or not windowable(list(nodes), self.sim.shapes[entry]):
            return None
        wh, ww = window_shape(shape[2], shape[3], self.cfg.window)
        return None if (wh, ww) == tuple(shape[2:]) else (wh, ww)

    def fit(self, label: str, ada: dict[str, AdaRoundWeight], loss_fn, steps: list[torch.Tensor] | None = None
            ) -> tuple[float, float]:
        """Adam on the rounding variables (and on the activation ``steps``, lr ``act_lr`` with cosine
        decay to 0 as in BRECQ's code) for ``iterations`` steps; (first, last-50 mean) losses."""
        cfg = self.cfg
        groups = [{"params": [a.v for a in ada.values()], "lr": cfg.lr}]
        if steps:
            groups.append({"params": steps, "lr": cfg.act_lr, "cosine": True})
        opt = torch.optim.Adam(groups)
        total = cfg.iterations
        sched = BetaSchedule(total)
        first, tail = float("nan"), []
        it = 0
        c0 = time.process_time()
        while it < total:
            if cfg.cpu_budget is not None and total > it >= PROBE and (it == PROBE or it % REPROBE == 0):
                # the budget binds: fewer steps. Re-estimated as steps run (the 5-step probe under-estimated
                # Lite1's last chain 2.4x), and only ever shortened, never below MIN_STEPS or the steps done
                per_step = (time.process_time() - c0) / it
                fit = max(min(cfg.iterations, MIN_STEPS), min(cfg.iterations, int(cfg.cpu_budget / max(per_step, 1e-9))))
                if fit < total:
                    total = max(fit, it + 1)
                    sched = BetaSchedule(total)  # the probe steps were warm-up (no regulariser) under either schedule
            reg_on, beta = sched(it)
            rec = loss_fn({k: a() for k, a in ada.items()})
            loss = rec
            if reg_on:
                loss = rec + cfg.reg_lambda * sum(a.regulariser(beta) for a in ada.values())
            opt.zero_grad()
            loss.backward()
            for g in opt.param_groups:
                if g.get("cosine"):
                    g["lr"] = cfg.act_lr * 0.5 * (1 + math.cos(math.pi * it / total))
            opt.step()
            if it == 0:
                first = rec.item()
            if it >= total - 50:
                tail.append(rec.item())
            self.progress.advance(label, rec.item())
            it += 1
            if it % TRIM_EVERY == 0:
                trim_heap()
        self.progress.skip(cfg.iterations - total)  # steps the CPU budget cut count as done
        self.steps_done.append(total)
        return first, float(np.mean(tail)) if tail else first

    def unit_brecq(self, unit: Unit, ada, xf: TensorStore, xq: TensorStore, yf: TensorStore) -> tuple[float, float]:
        drop = self.cfg.qdrop

        def loss_fn(w):
            idx = self._sample(len(xq))
            win = self._window(unit.nodes, unit.entry)
            box_in, box_out = (None, None) if win is None else (win.boxes[unit.entry], win.out)
            x = xq.get(idx, box_in)
            if drop > 0:
                x = torch.where(torch.rand(x.shape, generator=self.gen) < drop, xf.get(idx, box_in), x)
            env = self.sim.run(unit.nodes, unit.entry, x, w, quant=True, drop=drop, gen=self.gen, win=win)
            return _rec_loss(env[unit.output], yf.get(idx, box_out), win, self.sim.shapes[unit.output])

        steps = self.sim.learn_steps(n.name for n in unit.nodes) if self.cfg.learn_act_scale else None
        return self.fit(unit.describe(), ada, loss_fn, steps)

    def unit_adaround(self, unit: Unit, ada, xf: TensorStore, xq: TensorStore, space: StoreSpace,
                      times: dict[str, float]) -> tuple[float, float]:
        """Layer by layer inside the unit. Each layer's input (through the already rounded layers
        before it, quantized) and float target are computed once over the calibration set and cached
        in float16 (``cache.TensorStore``, on disk beyond the budget), so a step costs one layer on
        ``batch_size`` samples, not the unit's prefix twice."""
        nodes = list(unit.nodes)
        done: dict[str, torch.Tensor] = {}
        first = last = 0.0
        for k, n in enumerate(nodes):
            if n.name not in ada:
                continue
            t0 = time.perf_counter()
            a = ada[n.name]
            prefix, src = nodes[:k], n.inputs[0]
            rows = self.sim.stream_rows([unit.entry] + [m.name for m in prefix + [n]])
            inp = map_stores(space, [xq], lambda x, p=prefix, s=src: self.sim.run(p, unit.entry, x, done, quant=True, keep=s)[s],
                             batch_size=rows, dtype=np.float16)
            tgt = map_stores(space, [xf], lambda x, p=prefix + [n], m=n.name: self.sim.run(p, unit.entry, x, keep=m)[m],
                             batch_size=rows, dtype=np.float16)

            def loss_fn(w, n=n, inp=inp, tgt=tgt):
                idx = self._sample(len(inp))
                win = self._window([n], n.inputs[0])
                box_in, box_out = (None, None) if win is None else (win.boxes[n.inputs[0]], win.out)
                y = self.sim.run([n], n.inputs[0], inp.get(idx, box_in), w, win=win)[n.name]
                return _rec_loss(y, tgt.get(idx, box_out), win, self.sim.shapes[n.name])

            try:
                f, l = self.fit(f"layer {n.name}", {n.name: a}, loss_fn)
            finally:
                inp.release()
                tgt.release()
            first, last = first + f, last + l
            with torch.no_grad():
                done[n.name] = a(hard=True)
            times[n.name] = time.perf_counter() - t0
        return first, last

    def unit_gptq(self, unit: Unit, grids: dict[str, "WeightGrid"], xq: TensorStore, space: StoreSpace,
                  result: "ReconResult", times: dict[str, float]) -> tuple[TensorStore, dict, float, float]:
        """GPTQ node by node inside the unit, each node's quantized output computed once into a store
        (released after its last use), so a layer's Hessian sees the already rounded layers before
        it at the cost of one forward pass; (unit output store, hard weights, nearest error, GPTQ error)."""
        from .gptq import Hessian, gptq_node

        nodes = list(unit.nodes)
        last_use = {a: i for i, n in enumerate(nodes) for a in n.inputs}
        stores: dict[str, TensorStore] = {unit.entry: xq}
        done: dict[str, torch.Tensor] = {}
        near = err = 0.0
        bs = self.cfg.batch_size
        try:
            for i, n in enumerate(nodes):
                t0 = time.perf_counter()
                if n.name in grids:
                    grid = grids[n.name]
                    hess = Hessian(n)
                    for x in stores[n.inputs[0]].batches(bs):
                        hess.add(x)
                    bits = grid.extra.get("channel_bits")
                    binary = None if bits is None else np.asarray(bits) == 1
                    w = torch.as_tensor(n.params["weight"], dtype=torch.float64)
                    steps = grid.steps(tuple(w.shape))
                    q = gptq_node(n, hess, steps, grid.lo, grid.hi, binary, self.cfg.damp, act_order=self.cfg.act_order)
                    shape = (-1,) + (1,) * (q.ndim - 1)
                    scale = torch.as_tensor(steps, dtype=torch.float64).reshape(shape if steps.ndim == 1 else w.shape)
                    nearest = torch.clamp(torch.round(w / scale), torch.as_tensor(grid.lo, dtype=torch.float64).reshape(shape),
                                          torch.as_tensor(grid.hi, dtype=torch.float64).reshape(shape))
                    near += _hessian_error(w - nearest * scale, hess)
                    err += _hessian_error(w - q * scale, hess)
                    done[n.name] = (q * scale).float()
                    result.weights[n.name] = (q.numpy().astype(np.int8), grid.scale, grid.bits)
                stores[n.name] = map_stores(space, [stores[a] for a in n.inputs],
                                            lambda *xs, n=n: self.sim.node(n, list(xs), done, quant=True),
                                            batch_size=min(bs, self.sim.stream_rows([*n.inputs, n.name])))
                for a in set(n.inputs):
                    if last_use[a] == i and a != unit.entry:
                        stores.pop(a).release()
                if n.name in grids:
                    times[n.name] = time.perf_counter() - t0
                    self.progress.advance(f"layer {n.name}", err)
            out = stores.pop(unit.output)
        finally:
            for k, st in stores.items():
                if k != unit.entry:
                    st.release()
        return out, done, near, err


def _hessian_error(d: torch.Tensor, hess) -> float:
    """Mean squared output error ``tr(D H D^T) / M`` of a weight error ``d`` (O, ...) per input column."""
    g = hess.h.shape[0]
    dg = d.reshape(g, d.shape[0] // g, -1)
    return float(torch.einsum("grk,gkj,grj->", dg, hess.h, dg) / max(hess.count, 1))


def reconstruct_graph(graph: Graph, act_qp: dict[str, QParams], grids: dict[str, WeightGrid], calib,
                      cfg: ReconConfig, progress: bool | None = None) -> ReconResult:
    """Learn the rounding of every node in ``grids`` (name -> its integer grid); others stay float
    in the sim (and keep their weight method's integers in the program). ``progress``: a bar on
    stderr (None: when it is a terminal)."""
    from .progress import Progress

    t0 = time.perf_counter()
    units = find_units(graph, max_layers=cfg.max_layers)
    if cfg.requant not in ("gemmlowp", "exact"):
        raise RecipeError(f"reconstruction option requant={cfg.requant!r}; use 'gemmlowp' (as q.run rounds by "
                          "default) or 'exact' (single rounding, as rounding='onnxruntime')")
    if cfg.learn_act_scale is None:
        cfg = dataclasses.replace(cfg, learn_act_scale=cfg.method == "brecq")
    act_qp = dict(act_qp)  # learned steps go here (and into result.act_qp), not into the caller's dict
    shifts = (lambda: requant_shifts(graph, act_qp, grids) if cfg.requant == "gemmlowp" else None)
    sim = _Sim(graph, act_qp, shifts(), grids)
    result = ReconResult()
    space = StoreSpace(cfg.memory_mb << 20, cfg.cache_dir)
    per_unit = [sum(1 for n in u.layers if n.name in grids) for u in units]
    per_layer = cfg.method in ("adaround", "gptq")
    steps = 1 if cfg.method == "gptq" else cfg.iterations
    total = sum((c if per_layer else int(c > 0)) * steps for c in per_unit)
    progress = Progress(total, enabled=progress)
    trainer = _Trainer(cfg, sim, progress)
    threads = torch.get_num_threads()
    torch.set_num_threads(_cores())  # reconstruction is the long phase: use every core it may
    try:
        xf, xq = initial_stores(space, graph, sim, calib, cfg.calib_samples)
        if cfg.method == "gptq":  # GPTQ fits W X_q only: no float targets to carry
            xf.release()
        for unit in units:
            tu = time.perf_counter()
            times: dict[str, float] = {}
            if cfg.method == "gptq":
                yq, hard, f, l = trainer.unit_gptq(unit, grids, xq, space, result, times)
                if hard:
                    result.units.append(UnitReport(unit.describe(), tuple(hard), f, l, time.perf_counter() - tu, times))
            else:
                ada = {n.name: _make_ada(n, grids[n.name]) for n in unit.layers if n.name in grids}
                rows = sim.stream_rows([unit.entry] + [n.name for n in unit.nodes])
                yf = map_stores(space, [xf], lambda x, u=unit: sim.run(u.nodes, u.entry, x, keep=u.output)[u.output],
                                batch_size=rows)
                if ada:
                    trainer.steps_done = []
                    if cfg.method == "adaround":
                        f, l = trainer.unit_adaround(unit, ada, xf, xq, space, times)
                        wins = {n.name: trainer.window_of([n], n.inputs[0]) for n in unit.layers if n.name in ada}
                    else:
                        f, l = trainer.unit_brecq(unit, ada, xf, xq, yf)
                        wins = {unit.describe(): trainer.window_of(unit.nodes, unit.entry)}
                    for name, a in ada.items():
                        result.weights[name] = (a.integers(), grids[name].scale, grids[name].bits)
                    result.units.append(UnitReport(unit.describe(), tuple(ada), f, l, time.perf_counter() - tu, times,
                                                   iterations=sum(trainer.steps_done),
                                                   windows={k: v for k, v in wins.items() if v},
                                                   layer_iterations=dict(zip(ada, trainer.steps_done))
                                                   if cfg.method == "adaround" else {}))
                if sim.log_steps:  # the learned grids become the program's: later units and yq use them
                    result.act_qp.update(sim.commit_steps())
                    sim.shifts = shifts() or {}
                    sim.grid_biases()
                hard = {name: a(hard=True).detach() for name, a in ada.items()}
                yq = map_stores(space, [xq], lambda x, u=unit: sim.run(u.nodes, u.entry, x, hard, quant=True, keep=u.output)[u.output],
                                batch_size=rows)
            result.disk_bytes_peak = max(result.disk_bytes_peak, space.disk_bytes)
            xq.release()
            if cfg.method != "gptq":
                xf.release()
                xf = yf
            xq = yq
            progress.unit_done(unit.describe(), time.perf_counter() - tu)
        xq.release()
        if cfg.method != "gptq":
            xf.release()
    finally:
        torch.set_num_threads(threads)
        space.close()
        progress.close()
    result.seconds = time.perf_counter() - t0
    return result


def _cores() -> int:
    """CPUs this process may run on (the container's, not the host's)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _make_ada(node: Node, grid: WeightGrid) -> AdaRoundWeight:
    bits = grid.extra.get("channel_bits")  # a per-channel bit allocation: its 1-bit channels learn the sign
    binary = None if bits is None else np.asarray(bits) == 1
    return AdaRoundWeight(node.params["weight"], grid.scale, grid.lo, grid.hi, binary)
