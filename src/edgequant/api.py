"""The front door: ``quantize(model, recipe, calib)``."""
from __future__ import annotations

import fnmatch
import json
import warnings
from typing import Iterable

import numpy as np
import torch

from .calibrate import CalibrationView, calibrate, check_batch, check_finite, first_batch
from .capture import capture
from .heap import bounded_heap
from .errors import CaptureError, InputError, RecipeError
from .ir import Graph
from .lower import lower
from .lowbit.equalize import equalize_step
from .lowbit.smooth import alpha_option, smooth_step
from .lowbit.steps import lowbit_step
from .passes import prepare
from .quantized import QuantizedModel
from .recipes import Recipe, get_recipe

# Post-training algorithms that need the graph, the recipe, activation qparams and calibration data
# (e.g. empirical bias correction). Each is ``step(graph, recipe, act_qp, calib) -> graph`` and is
# applied in order before lowering; a step does nothing unless the recipe asks for it.
PTQ_STEPS: list = []
PTQ_STEPS.append(smooth_step)  # SmoothQuant factors of dynamic recipes (option smooth); before GPTQ
PTQ_STEPS.append(lowbit_step)  # first/last-layer widths, bias correction (recipe options)


WEIGHT_OPS = ("conv", "linear", "rnn", "embedding", "layernorm")


def float_param_bytes(graph: Graph) -> int:
    """fp32 bytes of the (BN-folded) weights and biases: the baseline for size ratios. Embedding
    tables and LayerNorm parameters count: a BERT's token table is half its weights (all-MiniLM-L6-v2:
    46.9 of 90.9 MB), and leaving it out made every transformer row look twice its real ratio."""
    return int(sum(4 * v.size for n in graph.nodes if n.op in WEIGHT_OPS
                   for k, v in n.params.items() if k != "in_scale"))  # in_scale: SmoothQuant's factors, not the model's


def _check_reconstruction_ops(r: Recipe, graph: Graph) -> None:
    """Reconstruction (AdaRound/BRECQ) handles conv nets; refuse transformer and recurrent layers by name up front.
    GPTQ needs only layer-input Hessians and runs on transformers too (``reconstruct/gptq_graph.py``);
    recurrent layers are refused for every method."""
    if r.option("reconstruct") is None:
        return
    from .errors import UnsupportedOpError

    for n in graph.nodes:
        if n.op == "rnn" or (r.option("reconstruct") != "gptq" and (
                n.op in ("matmul", "softmax", "layernorm", "transpose") or (n.op == "linear" and len(n.shape) > 2))):
            raise UnsupportedOpError(f"recipe {r.name!r}: reconstruction does not support {n.describe()} yet; "
                                     "use a plain post-training recipe such as 'w8a8-pc' or 'w4a8', or GPTQ "
                                     "(e.g. 'w4a8-gptq'), for this model")


def capture_prepared(model: torch.nn.Module, example: torch.Tensor) -> Graph:
    return prepare(capture(model, example))


def check_recipe(r: Recipe) -> Recipe:
    """Reject recipe settings the integer program cannot honour, before any work is done."""
    from .observers import OBSERVERS
    from .weight_quant import WEIGHT_METHODS

    for what, spec in (("weights", r.weights), ("activations", r.activations)):
        if spec is not None and spec.observer not in OBSERVERS:
            raise RecipeError(f"recipe {r.name!r}: {what} observer {spec.observer!r} is unknown; registered: {sorted(OBSERVERS)}")
    if r.mode in ("static", "dynamic"):
        method = r.option("weight_method", "observer")
        if method not in WEIGHT_METHODS:
            raise RecipeError(f"recipe {r.name!r}: unknown weight_method {method!r}; known: {sorted(WEIGHT_METHODS)}")
    alpha_option(r)  # smooth: a strength in (0, 1], dynamic recipes only
    if r.option("dynamic_scale", "tensor") not in ("tensor", "token") or (
            r.option("dynamic_scale") is not None and r.mode != "dynamic"):
        raise RecipeError(f"recipe {r.name!r}: dynamic_scale={r.option('dynamic_scale')!r}; a dynamic recipe takes "
                          "'tensor' (one run-time scale per batch) or 'token' (one per row of a linear's input)")
    if r.mode == "static" and r.activations.per_channel:
        raise RecipeError(f"recipe {r.name!r}: per-channel activations are not supported (integer kernels use one "
                          "activation scale per tensor); set activations per_channel=False")
    for o in r.overrides:
        for what, b in (("weight_bits", o.weight_bits), ("act_bits", o.act_bits)):
            if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8):
                raise RecipeError(f"recipe {r.name!r}: override {o.pattern!r} sets {what}={b!r}; the integer program "
                                  "supports 1..8 bits")
    try:
        json.dumps(r.to_dict())
    except (TypeError, ValueError) as e:
        raise RecipeError(f"recipe {r.name!r} does not convert to JSON ({e}); option values must be JSON values "
                          "(numbers, strings, booleans, lists) so that the recipe can be saved with the model") from e
    return r


def _warn_unmatched_overrides(r: Recipe, graph: Graph) -> None:
    modules = {n.module for n in graph.nodes if n.op in ("conv", "linear")}
    for o in r.overrides:
        if not any(fnmatch.fnmatch(m, o.pattern) for m in modules):
            warnings.warn(f"recipe {r.name!r}: override pattern {o.pattern!r} matches no conv/linear layer of this model "
                          f"(layers: {', '.join(sorted(modules)[:6])}{', ...' if len(modules) > 6 else ''}); it has no effect",
                          UserWarning, stacklevel=3)


def _tensor_example(example_input) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor):
        try:
            example_input = torch.as_tensor(np.asarray(example_input))
        except (TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"example_input must be a tensor or array, got {type(example_input).__name__} ({e})") from None
    if example_input.ndim < 2 or example_input.shape[0] == 0:
        raise InputError(f"example_input must be a non-empty (N, ...) batch, got shape {tuple(example_input.shape)}")
    check_batch(example_input, tuple(example_input.shape), "example input", InputError)
    check_finite(example_input.float(), "example input")
    return example_input[:2]


def _dict_example(example: dict) -> dict:
    from .capture.hf import example_feeds

    try:
        ex = example_feeds(example)
    except CaptureError as e:
        raise InputError(str(e)) from None
    for k, v in ex.items():
        if v.dtype.is_floating_point:
            check_finite(v, f"example input {k!r}")
    return {k: v[:2] for k, v in ex.items()}


def quantize(model: torch.nn.Module, recipe: str | Recipe | None = None, calib: Iterable | None = None,
             example_input: torch.Tensor | None = None, max_calib_samples: int | None = None,
             nonfinite: str = "error") -> QuantizedModel:
    """Quantize ``model`` with ``recipe`` (a name like ``"w8a8-pc"`` or a ``Recipe``).

    Without a recipe (``None``, the default) it is chosen from the captured graph
    (``edgequant.defaults``): ``"w8a8-pc"``, or ``"w8a16"`` (16-bit activations, int8 weights) when
    the graph has LayerNorm or attention, where int8 activations lose fp32 fidelity. The choice
    and its reason are in ``program.meta["recipe_choice"]``.

    ``calib`` yields inputs or (x, y) batches (a DataLoader works); static recipes need it. The
    user's model is not modified. ``nonfinite="drop"`` leaves out calibration samples holding
    NaN/inf (with a warning) instead of rejecting them. The calibration summary (samples, input
    statistics) is kept in ``program.meta["calibration"]`` and saved with the model.
    """
    with bounded_heap():  # an ImageNet-size calibration frees thousands of large temporaries (heap.py)
        return _quantize(model, recipe, calib, example_input, max_calib_samples, nonfinite)


def _quantize(model: torch.nn.Module, recipe: str | Recipe, calib: Iterable | None, example_input: torch.Tensor | None,
              max_calib_samples: int | None, nonfinite: str) -> QuantizedModel:
    r = None if recipe is None else check_recipe(get_recipe(recipe))
    if example_input is None:
        if calib is None:
            from .errors import CalibrationError

            what = f"recipe {r.name!r}" if r is not None else "quantize"
            raise CalibrationError(f"{what} needs calibration data or an example_input to trace the model")
        example_input = first_batch(calib)
    if isinstance(example_input, dict):  # keyword inputs (a Hugging Face batch)
        graph = capture_prepared(model, _dict_example(example_input))
    else:
        graph = capture_prepared(model, _tensor_example(example_input))
    choice = None
    if r is None:
        from . import defaults

        choice = defaults.choose(graph)
        r = check_recipe(get_recipe(choice["recipe"]))
    _warn_unmatched_overrides(r, graph)
    act_qp = None
    summary: dict = {}
    view = calib
    if calib is not None and (max_calib_samples is not None or nonfinite == "drop"):
        view = CalibrationView(calib, max_calib_samples, drop_nonfinite=nonfinite == "drop")
    graph = equalize_step(graph, r, view)  # before calibration: it changes the activation ranges
    reference = graph
    if r.mode == "static":
        if calib is None:
            from .errors import CalibrationError

            raise CalibrationError(f"recipe {r.name!r} quantizes activations statically and needs calibration data")
        act_qp = calibrate(graph, r, calib, max_samples=max_calib_samples, nonfinite=nonfinite, summary=summary)
    _check_reconstruction_ops(r, graph)
    calib = view
    for step in PTQ_STEPS:
        graph = step(graph, r, act_qp, calib)
    program = lower(graph, r, act_qp)
    if summary:
        program.meta["calibration"] = summary
    if choice is not None:
        program.meta["recipe_choice"] = choice
    if r.option("reconstruct") is not None:  # per-unit/per-layer seconds and losses of the rounding
        from .reconstruct.pipeline import report_meta

        program.meta["reconstruct"] = report_meta()
    q = QuantizedModel(program, r, graph, float_param_bytes(graph))
    q.reference_graph = reference
    return q
