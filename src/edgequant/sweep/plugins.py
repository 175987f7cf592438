"""User plug-ins for the sweep: ``--model``, ``--data`` and ``--metric`` as ``FILE.py:FUNC``.

Contracts (what the CLI documents):

* ``--model FILE.py:FUNC`` -- ``FUNC()`` returns a trained ``torch.nn.Module`` taking one tensor
  ``(N, ...)`` and returning logits ``(N, classes)``. We call ``.eval()`` on it.
* ``--data FILE.py:FUNC`` -- ``FUNC()`` returns ``(calib, eval)`` or ``(calib, eval, train)``: each
  an iterable of ``(x, y)`` batches (a DataLoader works; lists and generators too -- every
  iterable is read exactly once). ``train`` is only needed for QAT rows.
* ``--metric agreement`` -- top-1 agreement with the fp32 model (the sweep uses the fp32 model's
  own argmax as the labels): for data without labels, or to measure quantization alone.
* ``--metric top1|top5|FILE.py:FUNC`` -- ``FUNC(logits, y) -> float`` over the *whole* evaluation
  set at once (``logits`` a float32 tensor (N, classes), ``y`` the concatenated labels). Higher is
  better. Return a fraction in [0, 1] or a percentage in [0, 100]: the scale is decided once from
  the fp32 baseline (a baseline <= 1 means fractions, and every row is multiplied by 100), so
  drops are always in percentage points.

``FILE`` may also be a dotted module (``pkg.mod:FUNC``); a bare built-in name (``digits_cnn``,
``resnet_digits``, ``mobilenet_v2_digits``, ``digits``) selects the shipped model/data.
Every failure is a ``PluginError`` that names the spec, what was wrong and what to do.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..feeds import KeywordBatch, cat
from ..errors import PluginError

BUILTIN_MODELS = ("digits_cnn", "resnet_digits", "mobilenet_v2_digits")
BUILTIN_DATA = ("digits",)
Metric = Callable[[torch.Tensor, torch.Tensor], float]


def _import_file(path: Path, spec: str):
    name = "edgequant_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))
    if name in sys.modules:
        return sys.modules[name]
    mspec = importlib.util.spec_from_file_location(name, path)
    if mspec is None or mspec.loader is None:
        raise PluginError(f"{spec}: cannot import {path} as Python; give a .py file, e.g. my_model.py:build")
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[name] = mod
    try:
        mspec.loader.exec_module(mod)
    except Exception as e:  # user code: any error while importing it is the plug-in's fault
        del sys.modules[name]
        raise PluginError(f"{spec}: importing {path} failed with {type(e).__name__}: {e}. Fix the file so that "
                          f"`python {path}` runs without errors.") from e
    return mod


def load_callable(spec: str, what: str) -> Callable:
    """``FILE.py:FUNC`` or ``pkg.module:FUNC`` -> the function (not called)."""
    if ":" not in spec:
        raise PluginError(f"--{what} {spec!r}: expected FILE.py:FUNC (e.g. my_{what}.py:build) or a built-in name")
    file, func = spec.rsplit(":", 1)
    if not func.isidentifier():
        raise PluginError(f"--{what} {spec!r}: {func!r} is not a Python function name; expected FILE.py:FUNC")
    path = Path(file)
    if file.endswith(".py") or path.exists():
        if not path.is_file():
            raise PluginError(f"--{what} {spec!r}: file {file!r} not found (looked in {Path.cwd()}); "
                              "check the path, relative paths are taken from the current directory")
        mod = _import_file(path, spec)
    else:
        try:
            mod = importlib.import_module(file)
        except Exception as e:
            raise PluginError(f"--{what} {spec!r}: no file {file!r} and importing module {file!r} failed "
                              f"({type(e).__name__}: {e}); pass a path to a .py file") from e
    fn = getattr(mod, func, None)
    if fn is None:
        names = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == mod.__name__)
        raise PluginError(f"--{what} {spec!r}: {file} has no function {func!r}; functions defined there: "
                          f"{', '.join(names) or 'none'}")
    if not callable(fn):
        raise PluginError(f"--{what} {spec!r}: {func!r} in {file} is a {type(fn).__name__}, not a function")
    return fn


def _call(fn: Callable, spec: str, what: str) -> Any:
    try:
        return fn()
    except Exception as e:  # user code
        raise PluginError(f"--{what} {spec!r}: calling {getattr(fn, '__name__', spec)}() raised "
                          f"{type(e).__name__}: {e}. The function must take no arguments.") from e


def load_model(spec: str | None) -> torch.nn.Module:
    """The model to sweep: a built-in (default ``digits_cnn``, pretrained) or ``FILE.py:FUNC``."""
    from .. import models

    spec = spec or "digits_cnn"
    if ":" not in spec and spec in BUILTIN_MODELS:
        return getattr(models, spec)(pretrained=True).eval()
    model = _call(load_callable(spec, "model"), spec, "model")
    if not isinstance(model, torch.nn.Module):
        raise PluginError(f"--model {spec!r} returned a {type(model).__name__}; it must return a torch.nn.Module "
                          "(the trained model, ready for inference)")
    return model.eval()


@dataclass
class Data:
    """Materialized batches: every iterable from the plug-in is read exactly once."""

    calib: list[tuple[Any, torch.Tensor | None]]  # calibration batches may come without labels
    eval: list[tuple[torch.Tensor, torch.Tensor]]
    train: Any = None  # passed to QAT as given (may be re-iterated by the training loop)

    @property
    def eval_x(self) -> torch.Tensor:
        return cat([x for x, _ in self.eval])

    @property
    def eval_y(self) -> torch.Tensor:
        return torch.cat([y for _, y in self.eval])


def _as_tensor(v, spec: str, which: str, i: int, field: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v)
    raise PluginError(f"--data {spec!r}: {which} batch {i} has {field} of type {type(v).__name__}; batches must be "
                      "(x, y) pairs of tensors or NumPy arrays")


def _as_x(v, spec: str, which: str, i: int):
    """A batch's inputs: a float tensor, or a dict of tensors (keyword inputs, e.g. a tokenizer's output)."""
    if isinstance(v, dict):
        if not v or not all(isinstance(k, str) for k in v):
            raise PluginError(f"--data {spec!r}: {which} batch {i} is a dict without string keys; a dict batch maps the "
                              "model's keyword argument names to tensors")
        out = KeywordBatch({k: _as_tensor(t, spec, which, i, f"x[{k!r}]") for k, t in v.items()})
        return KeywordBatch({k: t.float() if t.dtype.is_floating_point else t.long() for k, t in out.items()})
    return _as_tensor(v, spec, which, i, "x").float()


def _batches(it: Iterable, spec: str, which: str, limit: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    try:
        iterator = iter(it)
    except TypeError:
        raise PluginError(f"--data {spec!r}: the {which} set is a {type(it).__name__}, not an iterable of (x, y) "
                          "batches (a DataLoader or a list of (x, y) tuples works)") from None
    out, n = [], 0
    for i, item in enumerate(iterator):
        if which == "calibration" and isinstance(item, (torch.Tensor, np.ndarray, dict)):
            item = (item, None)  # calibration needs no labels: bare inputs (a tensor, or a tokenizer's dict)
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise PluginError(f"--data {spec!r}: {which} batch {i} is a {type(item).__name__}; every batch must be an "
                              "(x, y) pair: inputs (N, ...) and labels (N,)"
                              + (" (calibration batches may also be inputs alone)" if which == "calibration" else ""))
        x = _as_x(item[0], spec, which, i)
        y = None if item[1] is None and which == "calibration" else _as_tensor(item[1], spec, which, i, "y")
        if x.ndim < 2 or (y is not None and y.shape[0] != x.shape[0]):
            raise PluginError(f"--data {spec!r}: {which} batch {i} has x {tuple(x.shape)} and y {tuple(y.shape)}; "
                              "x needs a batch dim and y one label per sample")
        if limit is not None and n + x.shape[0] > limit:
            x, y = x[: limit - n], (None if y is None else y[: limit - n])
        if x.shape[0]:
            out.append((x, y))
        n += x.shape[0]
        if limit is not None and n >= limit:
            break
    if not out:
        raise PluginError(f"--data {spec!r}: the {which} set is empty; it needs at least one (x, y) batch")
    return out


def load_data(spec: str | None, calib_samples: int | None = None, eval_samples: int | None = None,
              want_train: bool = False) -> Data:
    """(calib, eval[, train]) from the built-in digits data or ``FILE.py:FUNC``."""
    from .. import data as builtin

    spec = spec or "digits"
    if ":" not in spec and spec in BUILTIN_DATA:
        calib, ev = builtin.digits()
        got: Any = (calib, ev, builtin.digits_train() if want_train else None)
    else:
        got = _call(load_callable(spec, "data"), spec, "data")
        if not isinstance(got, (tuple, list)) or len(got) not in (2, 3):
            raise PluginError(f"--data {spec!r} returned a {type(got).__name__}"
                              f"{f' of length {len(got)}' if isinstance(got, (tuple, list)) else ''}; it must return "
                              "(calib, eval) or (calib, eval, train), each an iterable of (x, y) batches")
    train = got[2] if len(got) == 3 else None
    return Data(_batches(got[0], spec, "calibration", calib_samples), _batches(got[1], spec, "evaluation", eval_samples),
                train)


def _topk(k: int) -> Metric:
    def metric(logits: torch.Tensor, y: torch.Tensor) -> float:
        if logits.ndim != 2 or logits.shape[1] < k:
            raise PluginError(f"--metric top{k} needs logits (N, classes >= {k}); the model outputs {tuple(logits.shape)}. "
                              "Pass --metric FILE.py:FUNC for other outputs")
        top = logits.topk(k, dim=1).indices
        return 100.0 * float((top == y.reshape(-1, 1).to(top.device)).any(dim=1).float().mean())

    metric.__name__ = f"top{k}"
    return metric


def load_metric(spec: str | None) -> tuple[str, Metric]:
    """(name, fn): ``top1`` (default), ``top5``, ``agreement`` or ``FILE.py:FUNC``; see the module doc.

    ``agreement`` is top-1 against labels the caller sets to the fp32 model's argmax (the sweep does).
    """
    spec = spec or "top1"
    if spec in ("top1", "top5"):
        return spec, _topk(int(spec[3:]))
    if spec == "agreement":
        return spec, _topk(1)
    fn = load_callable(spec, "metric")

    def metric(logits: torch.Tensor, y: torch.Tensor) -> float:
        try:
            v = fn(logits, y)
        except Exception as e:  # user code
            raise PluginError(f"--metric {spec!r} raised {type(e).__name__}: {e}; it is called as FUNC(logits, y) with "
                              f"logits {tuple(logits.shape)} float32 and y {tuple(y.shape)}") from e
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise PluginError(f"--metric {spec!r} returned a {type(v).__name__}; it must return one number "
                              "(a fraction in [0, 1] or a percentage)") from None
        if not np.isfinite(f):
            raise PluginError(f"--metric {spec!r} returned {f}; it must return a finite number")
        return f

    file, _, func = spec.rpartition(":")
    return f"{Path(file).name}:{func}", metric  # the name labels axes and tables: no absolute path
