"""Bias correction: undo the systematic error that quantizing the weights adds to each output channel.

Recipe option ``bias_correction``:

* ``"banner"`` (Banner et al., arXiv 1810.05723, section 4): per output channel, restore the norm
  and the mean of the quantized weights. The norm factor
  ``xi_c = ||W_c - mean W_c|| / ||Wq_c - mean Wq_c||`` rescales the channel's scale (exact in the
  integer program: it is just ``w_scale``); the mean shift ``mu_c = mean W_c - xi_c mean Wq_c``
  would add ``mu_c * sum_k x_k`` to the output, which an integer program cannot hold per weight,
  so its expectation ``mu_c * E[sum_k x_k]`` is folded into the bias (``E[x]`` from calibration).
* ``"empirical"`` (Nagel et al., DFQ, arXiv 1906.04721, section 4.2): fold the whole expected
  output error ``E[(W - Wq) x] = (W - Wq) E[x]`` into the bias, ``E[x]`` the mean calibration input
  of the layer in the float model (per input channel and position, so padding is exact); the
  per-channel bias takes its average over output positions.
* ``"both"``: the norm factor, then the empirical correction of what remains.
* ``"sequential"``: each bias set so that the layer's mean pre-activation output, with everything
  upstream quantized and already corrected, equals the float model's (``seq_bias.py``).

``Wq`` is exactly what lowering will store (same weight method, same widths), so the correction
matches the program.
"""
from __future__ import annotations

import numpy as np
import torch

from ..calibrate import iter_batches
from ..feeds import batch_size, float_inputs
from ..errors import CalibrationError, RecipeError
from ..graph_exec import GraphModule, conv_float
from ..ir import Graph, Node
from ..qmath import QParams
from ..recipes import Recipe
from ..weight_quant import WEIGHT_CORRECTIONS, quantize_weight_ex

MODES = ("banner", "empirical", "both", "sequential")


def _mode(recipe: Recipe) -> str | None:
    mode = recipe.option("bias_correction")
    if mode in (None, False, "none"):
        return None
    if mode not in MODES:
        raise RecipeError(f"recipe {recipe.name!r}: bias_correction must be one of {MODES} (or unset), got {mode!r}")
    return mode


def norm_factor(w: np.ndarray, wq: np.ndarray) -> np.ndarray:
    """``xi_c = ||W_c - mean W_c|| / ||Wq_c - mean Wq_c||`` per output channel (1 where undefined)."""
    a = w.reshape(w.shape[0], -1).astype(np.float64)
    b = wq.reshape(wq.shape[0], -1).astype(np.float64)
    na = np.linalg.norm(a - a.mean(axis=1, keepdims=True), axis=1)
    nb = np.linalg.norm(b - b.mean(axis=1, keepdims=True), axis=1)
    return np.where((nb > 0) & (na > 0), na / np.where(nb > 0, nb, 1.0), 1.0)


def restore_norm(node: Node, recipe: Recipe, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Weight correction (registered in ``weight_quant.WEIGHT_CORRECTIONS``): scale *= xi."""
    if _mode(recipe) not in ("banner", "both"):
        return scale
    s = np.asarray(scale, np.float64)
    wq = q.astype(np.float64) * s.reshape((-1,) + (1,) * (q.ndim - 1))
    return (s * norm_factor(node.params["weight"], wq)).astype(np.float32)


WEIGHT_CORRECTIONS.append(restore_norm)


def dequantized_weight(node: Node, recipe: Recipe, bits: int) -> np.ndarray:
    q, scale, _ = quantize_weight_ex(node, recipe, bits)
    return q.astype(np.float64) * scale.astype(np.float64).reshape((-1,) + (1,) * (q.ndim - 1))


def mean_inputs(graph: Graph, nodes: list[Node], calib) -> dict[str, np.ndarray]:
    """Mean over the calibration set of each node's input tensor (float model), without batch dim."""
    want = {n.inputs[0] for n in nodes}
    sums: dict[str, np.ndarray] = {}
    count = 0
    gm = GraphModule(graph)

    def hook(node: Node, y: torch.Tensor) -> torch.Tensor:
        if node.name in want:
            s = y.detach().double().sum(dim=0).numpy()
            sums[node.name] = s if node.name not in sums else sums[node.name] + s
        return y

    with torch.no_grad():
        for x in iter_batches(calib):
            if batch_size(x):
                gm(float_inputs(x), hook)
                count += batch_size(x)
    if count == 0:
        raise CalibrationError("bias correction needs a non-empty calibration set")
    return {k: v / count for k, v in sums.items()}


def expected_error(node: Node, err_w: np.ndarray, mean_x: np.ndarray) -> np.ndarray:
    """Per output channel, the average over output positions of ``(W - Wq) * E[x]``."""
    if node.op == "linear":  # an (N, ..., I) input: E[x] over every position of the last dim
        return err_w @ mean_x.reshape(-1, err_w.shape[1]).mean(axis=0)
    x = torch.from_numpy(mean_x[None].astype(np.float64))
    y = conv_float(x, torch.from_numpy(err_w.astype(np.float64)), None, node.attrs)[0]  # (O, ...)
    return y.reshape(y.shape[0], -1).mean(dim=1).numpy()


def correct_biases(graph: Graph, recipe: Recipe, calib, bits_of) -> Graph:
    """A copy of ``graph`` whose conv/linear biases absorb the expected quantization error."""
    mode = _mode(recipe)
    gemms = [n for n in graph.nodes if n.op in ("conv", "linear") and bits_of(n) is not None]
    if mode is None or not gemms:
        return graph
    if calib is None:
        raise CalibrationError(f"recipe {recipe.name!r}: bias_correction={mode!r} needs calibration data (E[x])")
    means = mean_inputs(graph, gemms, calib)
    g = graph.copy()
    by = g.by_name()
    for n in gemms:
        w = n.params["weight"].astype(np.float64)
        wq = dequantized_weight(n, recipe, bits_of(n))  # includes the norm factor for banner/both
        err = w - wq
        if mode == "banner":  # only the per-channel mean shift
            err = np.broadcast_to(err.reshape(err.shape[0], -1).mean(axis=1).reshape((-1,) + (1,) * (w.ndim - 1)), w.shape)
        delta = expected_error(n, np.ascontiguousarray(err), means[n.inputs[0]])
        node = by[n.name]
        node.params["bias"] = (node.params["bias"].astype(np.float64) + delta).astype(np.float32)
    return g


def bias_correction_step(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None, calib,
                         bits_of=None) -> Graph:
    """PTQ step: no-op unless the recipe sets ``bias_correction``; weights must be quantized."""
    if recipe.mode not in ("static", "dynamic") or _mode(recipe) is None:
        return graph
    if bits_of is None:
        bits_of = lambda n: recipe.layer_bits(n.module)[0]  # noqa: E731
    if _mode(recipe) == "sequential":
        if recipe.mode != "static" or not act_qp:
            raise RecipeError(f"recipe {recipe.name!r}: bias_correction='sequential' needs a static recipe "
                              "(calibrated activation grids); use 'empirical'")
        from .seq_bias import SAMPLES, sequential_biases

        n = recipe.option("bias_correction_samples", SAMPLES)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise RecipeError(f"recipe {recipe.name!r}: bias_correction_samples={n!r} must be a positive integer")
        return sequential_biases(graph, recipe, act_qp, calib, bits_of, lambda node, b: dequantized_weight(node, recipe, b), n)
    return correct_biases(graph, recipe, calib, bits_of)
