"""SmoothQuant (Xiao et al. 2022, arXiv 2211.10438) for dynamic recipes: recipe option ``smooth=alpha``.

Why: a BERT-style encoder's LayerNorm outputs carry a few outlier channels (all-MiniLM-L6-v2:
channels ~10-20x the rest) in every token, so even a per-token int8 scale is set by them and the
other channels get a handful of levels. SmoothQuant moves that range into the weights: per input
channel ``j`` of a linear, ``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)``, the layer computes
``(X / s) @ (W * s)^T`` -- the same function -- and both factors now quantize well.

Where the factor goes: the paper folds ``1/s`` into the preceding LayerNorm. A post-LN BERT's
LayerNorm output also feeds the residual add, so it cannot take it; in a *dynamic* recipe the
activation is quantized at run time in float anyway, so the factor is one multiply in front of
that quantizer (``in_scale``, kept as a node parameter and honoured by the float graph, the
interpreter and the simulation). Static recipes are refused: their int8 input has one fixed grid.

``max|X_j|`` comes from one float pass over the calibration data (padded tokens left out, as GPTQ's
Hessians); the step runs before GPTQ so GPTQ rounds the smoothed weights on the smoothed inputs.
"""
from __future__ import annotations

import numpy as np
import torch

from ..calibrate import iter_batches
from ..errors import CalibrationError, RecipeError
from ..feeds import batch_size
from ..graph_exec import GraphModule
from ..ir import Graph, Node
from ..masking import batch_keep, kept_rows, padding_masks
from ..recipes import Recipe

OPTION = "smooth"
CALIB_SAMPLES = 256  # sentences/images for the channel maxima (a maximum settles quickly)
FACTOR_RANGE = (1e-5, 1e5)


def alpha_option(recipe: Recipe) -> float | None:
    """The recipe's migration strength, or None when the recipe does not smooth."""
    a = recipe.option(OPTION)
    if a in (None, False, 0):
        return None
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 < float(a) <= 1.0:
        raise RecipeError(f"recipe {recipe.name!r}: {OPTION}={a!r} must be the migration strength alpha in (0, 1] "
                          "(0.5 in the paper)")
    if recipe.mode != "dynamic":
        raise RecipeError(f"recipe {recipe.name!r}: {OPTION} needs a dynamic recipe (activations quantized at run "
                          "time, where the factor is one multiply before the quantizer); a static int8 input has one "
                          "fixed grid that a post-LN LayerNorm output, read by the residual too, cannot absorb")
    return float(a)


def factors(w: np.ndarray, x_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """Per-input-channel ``s`` of a linear weight (O, K) and its input's channel maxima (K,)."""
    w_absmax = np.abs(np.asarray(w, np.float64)).max(axis=0)
    x = np.asarray(x_absmax, np.float64)
    ok = (x > 0) & (w_absmax > 0)
    s = np.ones_like(x)
    s[ok] = x[ok] ** alpha / w_absmax[ok] ** (1.0 - alpha)
    return np.clip(s, *FACTOR_RANGE)


def channel_maxima(graph: Graph, layers: list[Node], calib) -> dict[str, np.ndarray]:
    """max |x_j| of each layer's input over the calibration data (kept tokens only), float graph."""
    masks = padding_masks(graph)
    readers: dict[str, list[Node]] = {}
    for n in layers:
        readers.setdefault(n.inputs[0], []).append(n)
    out: dict[str, np.ndarray] = {}
    keep: torch.Tensor | None = None

    def hook(node: Node, y: torch.Tensor) -> torch.Tensor:
        for n in readers.get(node.name, ()):
            m = kept_rows(n, y.detach(), keep).abs().amax(dim=0).double().numpy()
            out[n.name] = m if n.name not in out else np.maximum(out[n.name], m)
        return y

    gm = GraphModule(graph)
    seen = 0
    with torch.no_grad():
        for x in iter_batches(calib):
            if seen >= CALIB_SAMPLES:
                break
            keep = batch_keep(x, masks)
            gm(x, hook)
            seen += batch_size(x)
    return out


def smooth_step(graph: Graph, recipe: Recipe, act_qp, calib) -> Graph:
    """PTQ step: smooth every linear of a dynamic recipe with ``smooth=alpha`` (else the graph unchanged)."""
    alpha = alpha_option(recipe)
    if alpha is None:
        return graph
    if calib is None:
        raise CalibrationError(f"recipe {recipe.name!r}: {OPTION} needs calibration data (the input channel maxima)")
    g = graph.copy()
    layers = [n for n in g.nodes if n.op == "linear" and "in_scale" not in n.params]
    maxima = channel_maxima(g, layers, calib)
    for n in layers:
        if n.name not in maxima:
            continue
        w = n.params["weight"]
        s = factors(w, maxima[n.name], alpha)
        n.params = {**n.params, "weight": (w.astype(np.float64) * s[None, :]).astype(np.float32),
                    "in_scale": (1.0 / s).astype(np.float32)}
    return g
