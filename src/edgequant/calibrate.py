"""Calibration: stream batches through the float graph and let observers pick activation ranges.

Only fixed-size observer state is kept, so memory does not grow with the number of samples.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Iterator

import numpy as np
import torch

from .deadline import check_deadline
from .errors import CalibrationError
from .feeds import batch_size, float_part, is_int_input, take, to_feeds
from .graph_exec import GraphModule
from .ir import Graph, Node
from .observers import make_observer
from .qmath import QParams
from .recipes import Recipe

# Nodes whose output gets its own activation qparams; the others inherit their input's.
# softmax is not observed: its output qparams are fixed (scale 1/2^bits, zero point qmin, TFLite's).
OBSERVED_OPS = ("input", "conv", "linear", "add", "mul", "unary", "cat", "mean", "matmul", "layernorm", "rnn",
                "reduce")


class CalibrationWarning(UserWarning):
    """Calibration will work but probably badly (too few samples, unrepresentative data)."""


def iter_batches(data, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Inputs from a DataLoader of (x, y) or x, a list of tensors, or one (N, ...) tensor."""
    if isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    if isinstance(data, np.ndarray):
        yield from iter_batches(torch.from_numpy(data), batch_size)
        return
    try:
        it = iter(data)
    except TypeError:
        raise CalibrationError(f"calibration data must be iterable (DataLoader, list of tensors, or a tensor); got {type(data).__name__}") from None
    for item in it:
        check_deadline("calibration")  # every calibration-data loop comes through here
        x = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if isinstance(x, dict):  # keyword inputs (the Hugging Face convention)
            yield {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for k, v in x.items()}
            continue
        if not isinstance(x, torch.Tensor):
            raise CalibrationError(f"calibration batches must be tensors, dicts of tensors (keyword inputs) or (x, y) "
                                   f"tuples; got {type(x).__name__}")
        yield x


class CalibrationView:
    """The calibration samples ``calibrate`` used, re-iterable, for the steps after it.

    Why: post-training steps (bias correction, edge and binary recalibration, reconstruction)
    iterate the calibration data again; they must see the same samples (``max_samples``,
    ``nonfinite="drop"``) or a dropped NaN sample poisons a bias and ``max_samples`` is ignored.
    """

    def __init__(self, data, max_samples: int | None = None, drop_nonfinite: bool = False) -> None:
        self.data, self.max_samples, self.drop_nonfinite = data, max_samples, drop_nonfinite

    def __iter__(self) -> Iterator[torch.Tensor]:
        seen = 0
        for x in iter_batches(self.data):
            if self.drop_nonfinite and batch_size(x):
                x = _keep_finite(x)
            if self.max_samples is not None:
                x = take(x, 0, self.max_samples - seen)
            if batch_size(x) == 0:
                if self.max_samples is not None and seen >= self.max_samples:
                    return
                continue
            seen += batch_size(x)
            yield x


def _keep_finite(x):
    """The samples of batch ``x`` (a tensor or dict) whose float inputs are all finite."""
    parts = [v for v in (x.values() if isinstance(x, dict) else [x]) if v.dtype.is_floating_point]
    if not parts:
        return x
    keep = torch.stack([torch.isfinite(v.float()).reshape(v.shape[0], -1).all(dim=1) for v in parts]).all(dim=0)
    return {k: v[keep] for k, v in x.items()} if isinstance(x, dict) else x[keep]


def check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise CalibrationError(f"{what} contains {bad} NaN/inf values; clean or filter those samples before quantizing")


def first_batch(data):
    for x in iter_batches(data):
        if batch_size(x) > 0 and (isinstance(x, dict) or x.numel() > 0):
            return x
    raise CalibrationError("the calibration set is empty; pass at least one batch of representative inputs")


def activation_spec_for(node: Node, recipe: Recipe) -> tuple[int, dict]:
    _, ab = recipe.layer_bits(node.module)
    spec = recipe.activations
    return ab, {"bits": ab, "signed": True, "symmetric": spec.symmetric, "narrow": spec.narrow}


NONFINITE_MODES = ("error", "drop")


def check_batch(x: torch.Tensor, want: tuple[int, ...], what: str, error: type = CalibrationError) -> None:
    """A real-valued (N, ...) batch whose per-sample shape is the captured one (integers are cast)."""
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise error(f"{what} has dtype {x.dtype}; the model takes real-valued float32 inputs -- convert it, e.g. x.float()")
    if x.ndim != len(want) or tuple(x.shape[1:]) != tuple(want[1:]):
        raise error(f"{what} has shape {tuple(x.shape)}; the model was captured for (N, {', '.join(map(str, want[1:]))}) "
                    "-- every batch must have the example input's per-sample shape")


def _check_graph_batch(graph: Graph, x, what: str):
    """A batch for ``graph``: one float32 tensor, or a dict of its keyword inputs (ints kept int64)."""
    if not isinstance(x, dict) and len(graph.inputs) == 1 and not is_int_input(graph.node(graph.input).attrs):
        check_batch(x, graph.input_shape, what)
        return x.float()
    nodes = [graph.node(i) for i in graph.inputs]
    feeds = to_feeds(x, graph.inputs, {n.name for n in nodes if is_int_input(n.attrs)}, {n.name: n.shape for n in nodes},
                     CalibrationError, what)
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def calibrate(graph: Graph, recipe: Recipe, data: Iterable, max_samples: int | None = None,
              nonfinite: str = "error", summary: dict | None = None) -> dict[str, QParams]:
    """Observe every node in ``OBSERVED_OPS`` over ``data``; returns qparams per node name.

    ``nonfinite="error"`` (default) rejects NaN/inf inputs; ``"drop"`` leaves out the samples that
    hold any, with a warning. ``summary`` (a dict, if given) receives what was seen: samples,
    batches, dropped samples, observer and per-channel input statistics (``DataStats.to_dict``).
    """
    if nonfinite not in NONFINITE_MODES:
        raise CalibrationError(f"nonfinite={nonfinite!r}; use one of {NONFINITE_MODES}")
    if max_samples is not None and max_samples < 1:
        raise CalibrationError(f"max_samples={max_samples}: calibrate on at least one sample (None = all)")
    observers = {}
    for n in graph.nodes:
        if n.op in OBSERVED_OPS and not is_int_input(n.attrs):  # token ids and masks are never quantized
            _, kw = activation_spec_for(n, recipe)
            observers[n.name] = make_observer(recipe.activations.observer, **kw)
    gm = GraphModule(graph)
    seen = dropped = batches = 0
    stats = DataStats()

    def hook(node: Node, y: torch.Tensor) -> torch.Tensor:
        if node.name in observers:
            observers[node.name].update(y.detach().numpy())
        return y

    with torch.no_grad():
        for b, x in enumerate(iter_batches(data)):
            if batch_size(x) == 0:
                continue
            x = _check_graph_batch(graph, x, f"calibration batch {b}")
            if nonfinite == "drop":
                n0 = batch_size(x)
                x = _keep_finite(x)
                dropped += n0 - batch_size(x)
                if batch_size(x) == 0:
                    continue
            else:
                for k, v in (x.items() if isinstance(x, dict) else [("", x)]):
                    if v.dtype.is_floating_point:
                        check_finite(v, f"calibration batch {b}" + (f" input {k!r}" if k else ""))
            if max_samples is not None:
                x = take(x, 0, max_samples - seen)
            gm(x, hook)
            if float_part(x) is not None:
                stats.update(float_part(x))
            seen += batch_size(x)
            batches += 1
            if max_samples is not None and seen >= max_samples:
                break
    if dropped:
        warnings.warn(f"dropped {dropped} calibration sample(s) holding NaN/inf (nonfinite='drop'); "
                      f"calibrated on the remaining {seen}", CalibrationWarning, stacklevel=2)
    if seen == 0:
        raise CalibrationError("the calibration set is empty" + (" after dropping non-finite samples" if dropped else "")
                               + "; pass at least one batch of representative inputs")
    if seen == 1:
        warnings.warn("calibrating on a single sample: activation ranges will fit that sample only and "
                      "clip others; use 100+ representative samples", CalibrationWarning, stacklevel=2)
    if summary is not None:
        summary.update(samples=seen, batches=batches, dropped_nonfinite=dropped, observer=recipe.activations.observer,
                       input=stats.to_dict())
    return {name: ob.qparams() for name, ob in observers.items()}


# ---------------------------------------------------------------------------------------------
# calibration vs evaluation data
class DataStats:
    """Streaming per-channel (dim 1) statistics of input batches: fixed memory, any sample count.

    Moments are merged per batch (Chan et al.), in float64, so the result does not depend on how
    the data is batched beyond rounding.
    """

    def __init__(self) -> None:
        self.count = 0  # samples
        self.n = 0  # values per channel
        self.mean: np.ndarray | None = None  # (C,)
        self.m2: np.ndarray | None = None  # (C,) sum of squared deviations
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def update(self, x) -> None:
        v = np.asarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x, np.float64)
        if v.size == 0:
            return
        c = v.reshape(v.shape[0], v.shape[1] if v.ndim > 1 else 1, -1)
        c = np.moveaxis(c, 1, 0).reshape(c.shape[1], -1)  # (C, values)
        nb = c.shape[1]
        mb = c.mean(axis=1)
        m2b = ((c - mb[:, None]) ** 2).sum(axis=1)
        if self.mean is None:
            self.mean, self.m2, self.min, self.max = mb, m2b, c.min(axis=1), c.max(axis=1)
        else:
            if mb.shape != self.mean.shape:
                raise CalibrationError(f"batch has {mb.shape[0]} channels, earlier batches {self.mean.shape[0]}")
            tot = self.n + nb
            delta = mb - self.mean
            self.mean = self.mean + delta * nb / tot
            self.m2 = self.m2 + m2b + delta**2 * self.n * nb / tot
            self.min, self.max = np.minimum(self.min, c.min(axis=1)), np.maximum(self.max, c.max(axis=1))
        self.n += nb
        self.count += v.shape[0]

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))

    def to_dict(self) -> dict:
        if self.mean is None:
            return {"samples": 0}
        return {"samples": self.count, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "min": self.min.tolist(), "max": self.max.tolist()}

    @staticmethod
    def of(data, max_samples: int | None = None) -> "DataStats":
        """Statistics of ``data`` (anything ``iter_batches`` takes), streamed."""
        s = DataStats()
        for x in iter_batches(data):
            if max_samples is not None:
                x = x[: max_samples - s.count]
            s.update(x.float())
            if max_samples is not None and s.count >= max_samples:
                break
        return s


def compare_distributions(calib, evaluation, *, mean_tol: float = 1.0, std_ratio: float = 3.0,
                          range_tol: float = 0.5, warn: bool = True) -> list[str]:
    """Warn when calibration inputs look unlike the evaluation inputs (per input channel).

    Why: activation ranges are fitted to the calibration data; if the deployed inputs are shifted
    or scaled (wrong normalisation, another sensor), they are clipped or waste resolution and
    accuracy drops for reasons the quantizer cannot see. Flags, per channel: means more than
    ``mean_tol`` pooled standard deviations apart; standard deviations more than ``std_ratio``
    apart; evaluation values beyond the calibration range by more than ``range_tol`` of its width.
    ``calib``/``evaluation`` are data (tensors, lists, DataLoaders) or ``DataStats``. Returns the
    messages (empty when the data agree); ``warn`` also emits each as a ``CalibrationWarning``.
    """
    a = calib if isinstance(calib, DataStats) else DataStats.of(calib)
    b = evaluation if isinstance(evaluation, DataStats) else DataStats.of(evaluation)
    if a.mean is None or b.mean is None:
        raise CalibrationError("compare_distributions needs non-empty calibration and evaluation data")
    if a.mean.shape != b.mean.shape:
        raise CalibrationError(f"calibration data has {a.mean.shape[0]} channels, evaluation data {b.mean.shape[0]}")
    msgs = []
    pooled = np.sqrt((a.std**2 + b.std**2) / 2)
    tiny = 1e-12
    for c in range(a.mean.shape[0]):
        sa, sb = float(a.std[c]), float(b.std[c])
        gap = abs(float(a.mean[c] - b.mean[c]))
        if gap > mean_tol * max(float(pooled[c]), tiny):
            msgs.append(f"input channel {c}: calibration mean {a.mean[c]:.4g} vs evaluation mean {b.mean[c]:.4g} "
                        f"({gap / max(float(pooled[c]), tiny):.1f} standard deviations apart)")
        if max(sa, sb) > std_ratio * max(min(sa, sb), tiny):
            msgs.append(f"input channel {c}: calibration std {sa:.4g} vs evaluation std {sb:.4g}")
        width = max(float(a.max[c] - a.min[c]), tiny)
        over = max(float(b.max[c] - a.max[c]), float(a.min[c] - b.min[c]), 0.0)
        if over > range_tol * width:
            msgs.append(f"input channel {c}: evaluation values reach [{b.min[c]:.4g}, {b.max[c]:.4g}], calibration "
                        f"only [{a.min[c]:.4g}, {a.max[c]:.4g}] (they will be clipped)")
    if warn:
        for m in msgs:
            warnings.warn(f"calibration data differ from the evaluation data: {m}; calibrate on samples drawn like the "
                          "deployed inputs (same preprocessing and normalisation)", CalibrationWarning, stacklevel=2)
    return msgs
