"""The QAT module: a captured graph as a trainable ``nn.Module`` with fake-quant where the integer
program quantizes.

It runs the *prepared* graph (the one ``lower`` turns into the program) node by node through
``graph_exec.run_node``, so any model that captures trains, not only the demo. Fake-quant sits at
exactly the tensors the program stores as integers: the output of every node in
``calibrate.OBSERVED_OPS`` (after its fused activation) and the weights of every conv/linear.
Ops that keep their input's grid (clamp, pad, avgpool) round onto that grid as the program does.

BatchNorm that the program folds into a conv stays live during training, folded as in the
whitepaper (arXiv 1806.08342, sec. 3.2): the weight is folded with the *running* std and
fake-quantized, the conv output is rescaled so that batch statistics normalise it; after
``freeze_bn_step`` training steps the running statistics are used, which is exactly the folded
conv that ``convert`` lowers -- no accuracy jump at conversion.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..calibrate import OBSERVED_OPS
from ..errors import UnsupportedOpError
from ..graph_exec import _act, conv_float, run_node
from ..ir import Graph, Node
from ..lowbit.edges import node_bits
from ..qmath import QParams, round_half_away
from ..recipes import Recipe
from .config import QATConfig
from . import integer_twin as twin
from .fake_quant import ActFakeQuant, WeightFakeQuant
from .rnn import QATRnn, exact_output as rnn_exact

GEMM_OPS = ("conv", "linear")
_GRID_KEEPING = ("clamp", "pad", "maxpool", "avgpool", "reshape", "slice", "upsample")  # upsample: nearest only


def folded_batchnorm(raw: Graph, node: Node) -> Node | None:
    """The BatchNorm that ``passes.fold_batchnorm`` folds into ``node`` (same rule), or None."""
    if node.op not in GEMM_OPS or "act" in node.attrs:
        return None
    users = raw.consumers(node.name)
    if len(users) == 1 and users[0].op == "batchnorm":
        return users[0]
    return None


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C,) -> broadcastable against an (N, C, ...) activation or a (C, ...) weight."""
    return v.reshape((1, -1) + (1,) * (ndim - 2)) if ndim >= 2 else v


class QATGemm(nn.Module):
    """One conv/linear of the prepared graph: float weights, optional live BatchNorm, weight fake-quant."""

    def __init__(self, node: Node, raw_conv: Node | None, bn: Node | None, bits: int, per_channel: bool,
                 cfg: QATConfig) -> None:
        super().__init__()
        self.node = node
        self.has_bn = bn is not None
        src = raw_conv if self.has_bn else node
        self.weight = nn.Parameter(_t(src.params["weight"]))
        self.bias = nn.Parameter(_t(src.params["bias"]))
        if self.has_bn:
            self.bn_weight = nn.Parameter(_t(bn.params["weight"]))
            self.bn_bias = nn.Parameter(_t(bn.params["bias"]))
            self.register_buffer("running_mean", _t(bn.params["mean"]))
            self.register_buffer("running_var", _t(bn.params["var"]))
            self.eps = float(bn.attrs["eps"])
        self.freeze_bn_step = cfg.freeze_bn_step
        self.bn_momentum = cfg.bn_momentum
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        with torch.no_grad():
            w0, _ = self.folded()
        self.wfq = WeightFakeQuant(w0, bits, cfg.weight_range, per_channel, cfg.weight_init)

    @property
    def bn_frozen(self) -> bool:
        return (not self.has_bn) or (self.freeze_bn_step is not None and int(self.steps) >= self.freeze_bn_step)

    def _bn_scale(self) -> torch.Tensor:
        return self.bn_weight / torch.sqrt(self.running_var + self.eps)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) with BatchNorm folded by its running statistics (what the program gets)."""
        if not self.has_bn:
            return self.weight, self.bias
        f = self._bn_scale()
        w = self.weight * f.reshape((-1,) + (1,) * (self.weight.ndim - 1))
        return w, (self.bias - self.running_mean) * f + self.bn_bias

    def _gemm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.node.op == "linear":
            return F.linear(x, w, b)
        return conv_float(x, w, b, self.node.attrs)

    def forward(self, x: torch.Tensor, in_q: ActFakeQuant, out_q: ActFakeQuant, rounding: str | None) -> torch.Tensor:
        """``x`` on ``in_q``'s grid -> output on ``out_q``'s grid. With BN folded (frozen, or in
        eval) the value is the program's: int32 bias on the grid ``s_in * s_w[c]``, exact integer
        accumulation, requantization with ``rounding``; gradients are LSQ/STE's."""
        if self.has_bn and self.training and not self.bn_frozen:
            y = self._batch_norm_path(x)
            if self.training:
                self.steps += 1
            return out_q(_act(y, self.node))
        if self.training:
            self.steps += 1
        w, b = self.folded()
        s_w = self.wfq.scale_for(w)
        wq = self.wfq(w)
        s_in = in_q.scale_zp()[0]
        step = (s_in.detach() * s_w.detach()).float()  # float32, as lower computes the bias scale
        b_int = torch.round(b.detach().double() / step.double())
        b_q = b + (b_int.float() * step - b).detach()
        y_fq = out_q(_act(self._gemm(x, wq, b_q), self.node))
        if rounding is None:
            return y_fq
        with torch.no_grad():
            si, _ = in_q.grid()
            xi = twin.to_int(x, si, 0).double()
            wi = torch.round(wq.detach().double() / s_w.detach().double().reshape((-1,) + (1,) * (w.ndim - 1)))
            acc = torch.round(self._gemm(xi, wi, b_int)).long()
            s_w32 = s_w.detach().float()
            g = twin.OutputGrid.of(out_q.qparams(), self.node.attrs.get("act"))  # a 1-bit output: its carrier
            real = si * s_w32.double() / g.scale
            real_f32 = (torch.tensor(si, dtype=torch.float32, device=x.device) * s_w32) / torch.tensor(g.scale, dtype=torch.float32, device=x.device)
            q = twin.requantize(acc, _per_channel(real, acc.ndim), _per_channel(real_f32, acc.ndim), g.zero_point, g.lo, g.hi,
                                g.rounding(rounding))
            exact = g.value(q).to(y_fq.dtype)
        return y_fq + (exact - y_fq).detach()

    def _batch_norm_path(self, x: torch.Tensor) -> torch.Tensor:
        """Training with live BN (whitepaper fig. C.8): weights folded with the running std and
        fake-quantized, the output rescaled so that batch statistics normalise it."""
        f = self._bn_scale()
        wq = self.wfq(self.weight * f.reshape((-1,) + (1,) * (self.weight.ndim - 1)))
        y = self._gemm(x, wq, None)
        y = y / _per_channel(f, y.ndim) + _per_channel(self.bias, y.ndim)  # conv(x, W_q) before BN
        dims = [d for d in range(y.ndim) if d != 1]
        mean = y.mean(dims)
        var = y.var(dims, unbiased=False)
        with torch.no_grad():
            n = y.numel() // y.shape[1]
            m = self.bn_momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / max(n - 1, 1))
        inv = self.bn_weight / torch.sqrt(var + self.eps)
        return (y - _per_channel(mean, y.ndim)) * _per_channel(inv, y.ndim) + _per_channel(self.bn_bias, y.ndim)

    @torch.no_grad()
    def quantized_params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fake-quantized folded weight, folded bias, per-channel step), float32 NumPy."""
        w, b = self.folded()
        return (self.wfq(w).detach().cpu().numpy().astype(np.float32), b.detach().cpu().numpy().astype(np.float32),
                self.wfq.scale_for(w).detach().cpu().numpy().astype(np.float32))


NO_QAT_OPS = ("matmul", "softmax", "layernorm", "transpose", "const")  # post-training recipes only


class QATModel(nn.Module):
    """A prepared graph with fake-quant, trainable with any ordinary loop; ``eq.qat.convert`` lowers it."""

    def __init__(self, raw: Graph, prepared: Graph, recipe: Recipe, act_qp: dict[str, QParams], cfg: QATConfig) -> None:
        super().__init__()
        self.graph = prepared
        self.recipe = recipe
        self.config = cfg
        self.gemms = nn.ModuleDict()
        self.acts = nn.ModuleDict()
        self.rnns = nn.ModuleDict()  # recurrent layer-directions (qat.rnn)
        self._key: dict[str, str] = {}
        self._grid: dict[str, str] = {}  # node -> the node whose quantizer defines its integer grid
        raw_by = raw.by_name()
        for n in prepared.nodes:
            if n.op == "upsample" and n.attrs["mode"] != "nearest":
                raise UnsupportedOpError(f"{n.describe()}: quantization-aware training does not support {n.attrs['mode']} "
                                         "upsampling yet (nearest is); quantize this model with a post-training recipe "
                                         "such as 'w8a8-pc'")
            if n.op in NO_QAT_OPS or (n.op == "linear" and len(n.shape) > 2):
                raise UnsupportedOpError(f"{n.describe()}: quantization-aware training does not support {n.op} "
                                         f"{'on a ' + str(len(n.shape)) + '-D tensor ' if n.op == 'linear' else ''}yet; "
                                         "quantize this model with a post-training recipe such as 'w8a8-pc'")
        for i, n in enumerate(prepared.nodes):
            self._key[n.name] = f"n{i}_{n.name.replace('.', '_')}"
            if n.op in GEMM_OPS:
                rc = raw_by.get(n.name)
                bn = folded_batchnorm(raw, rc) if rc is not None and rc.op in GEMM_OPS else None
                wb, _ = node_bits(prepared, recipe, n)  # overrides and the first/last-layer rule, as lower
                self.gemms[self._key[n.name]] = QATGemm(n, rc, bn, wb, bool(recipe.weights.per_channel), cfg)
            if n.op == "rnn":
                self.rnns[self._key[n.name]] = QATRnn(n, node_bits(prepared, recipe, n)[0], bool(recipe.weights.per_channel), cfg)
            if n.op in OBSERVED_OPS:
                self.acts[self._key[n.name]] = ActFakeQuant(act_qp[n.name], cfg.act_range, recipe.activations.symmetric,
                                                            cfg.ema_momentum)
                self._grid[n.name] = n.name
            elif n.op in _GRID_KEEPING:
                self._grid[n.name] = self._grid[n.inputs[0]]

    def act_quantizer(self, node: str) -> ActFakeQuant:
        return self.acts[self._key[self._grid[node]]]

    def gemm(self, node: str) -> QATGemm:
        return self.gemms[self._key[node]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {}
        rounding = self.config.rounding
        for n in self.graph.nodes:
            args = [env[i] for i in n.inputs]
            if n.op == "input":
                y = self._input(x.float(), self.acts[self._key[n.name]], rounding)
            elif n.op in GEMM_OPS:
                y = self.gemm(n.name)(args[0], self.act_quantizer(n.inputs[0]), self.acts[self._key[n.name]], rounding)
            elif n.op == "rnn":
                y = self._rnn(n, args[0], rounding)
            elif n.op == "clamp":  # bounds snap onto the input grid, as the integer clamp does
                lo, hi = self.act_quantizer(n.inputs[0]).real_bounds(n.attrs["lo"], n.attrs["hi"])
                y = torch.clamp(args[0], lo, hi)
            elif n.op == "pad":
                v, _ = self.act_quantizer(n.inputs[0]).real_bounds(n.attrs["value"], n.attrs["value"])
                y = F.pad(args[0], [p for pr in reversed(n.attrs["pads"]) for p in pr], value=v)
            elif n.op in ("add", "cat", "mean", "avgpool", "unary", "mul"):
                y = self._requantizing(n, args, rounding)
            else:  # maxpool, reshape: exact on the input grid
                y = run_node(n, args, {})
            env[n.name] = y
        return env[self.graph.output]

    @staticmethod
    def _snap(y_fq: torch.Tensor, q: torch.Tensor, grid: tuple[float, int]) -> torch.Tensor:
        """Value of the program's integers ``q`` on ``grid``, gradient of the fake-quant ``y_fq``."""
        exact = (q - grid[1]).to(y_fq.dtype) * grid[0]
        return y_fq + (exact - y_fq).detach()

    def _input(self, x: torch.Tensor, fq: ActFakeQuant, rounding: str | None) -> torch.Tensor:
        y = fq(x)
        if rounding is None:
            return y
        g = twin.OutputGrid.of(fq.qparams(), None)  # a 1-bit input: quantized to its carrier, then binarized
        with torch.no_grad():  # the program's quantize: float32 division, then its rounding mode
            v = x.detach().float() / torch.tensor(g.scale, dtype=torch.float32, device=x.device)
            r = round_half_away(v) if rounding == "gemmlowp" else torch.round(v)
            q = torch.clamp(r.long() + g.zero_point, g.lo, g.hi)
        return y + (g.value(q).to(y.dtype) - y).detach()

    def _requantizing(self, n: Node, args: list[torch.Tensor], rounding: str | None) -> torch.Tensor:
        """add, cat, mean, avgpool, lookup tables, mul: float op + fake-quant, valued as the integer kernel computes."""
        if n.op == "avgpool":
            out_q = self.act_quantizer(n.name)
            y_fq = out_q.requant(run_node(n, args, {}))
        else:
            out_q = self.acts[self._key[n.name]]
            y_fq = out_q(run_node(n, args, {}))
        if rounding is None:
            return y_fq
        so, zo = out_q.grid()
        ins = [self.act_quantizer(i) for i in n.inputs]
        with torch.no_grad():
            grids = [fq.grid() for fq in ins]
            qs = [(twin.to_int(a, s, z), fq.qparams()) for a, (s, z), fq in zip(args, grids, ins)]
            out_qp = None if n.op == "avgpool" else out_q.qparams()
            q = twin.run_program_op(self.graph, n, self.recipe, qs, out_qp, rounding)
        return self._snap(y_fq, q, (so, zo))

    def _rnn(self, n: Node, x: torch.Tensor, rounding: str | None) -> torch.Tensor:
        mod, out_q = self.rnns[self._key[n.name]], self.acts[self._key[n.name]]
        y_fq = mod(x, out_q)
        if rounding is None:
            return y_fq
        with torch.no_grad():
            q = rnn_exact(self.graph, mod, self.recipe, x, self.act_quantizer(n.inputs[0]), out_q, rounding)
        return self._snap(y_fq, q, out_q.grid())

    # -- what convert reads --------------------------------------------------------------------
    def activation_qparams(self) -> dict[str, QParams]:
        return {name: self.acts[self._key[name]].qparams() for name in self._key if name in self._grid and self._grid[name] == name}

    def export_graph(self) -> Graph:
        """The prepared graph with trained, BN-folded, fake-quantized weights; the learned step
        per output channel is ``attrs["weight_scale"]`` (read by the "qat" weight method)."""
        g = self.graph.copy()
        for n in g.nodes:
            if n.op in GEMM_OPS:
                w, b, s = self.gemm(n.name).quantized_params()
                n.params = {"weight": w, "bias": b}
                n.attrs["weight_scale"] = [float(v) for v in s]
            elif n.op == "rnn":
                t = self.rnns[self._key[n.name]].trained_node()
                n.params, n.attrs = t.params, t.attrs
        return g

    def freeze_bn(self) -> "QATModel":
        """Use running BatchNorm statistics from now on (whitepaper: freeze late in training)."""
        for m in self.gemms.values():
            m.freeze_bn_step = 0
        return self

    def extra_repr(self) -> str:
        return f"recipe={self.recipe.name!r}, nodes={len(self.graph.nodes)}, act_range={self.config.act_range}, " \
               f"weight_range={self.config.weight_range}"
