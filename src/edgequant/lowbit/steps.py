"""The low-bit post-training step run by ``api.quantize`` between calibration and lowering."""
from __future__ import annotations

from ..act16 import widen_activations
from ..ir import Graph
from ..qmath import QParams
from ..recipes import Recipe
from .bias_correction import bias_correction_step
from .binary_calib import recalibrate_binary
from .clip_search import clip_search_step
from .edges import node_bits, recalibrate_edges


def lowbit_step(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None, calib) -> Graph:
    """First/last-layer activation widths (``first_last_bits``), 16-bit activations (``act16``), 1-bit activations re-observed on
    the binarized upstream, activation clips by output error (``act_clip="search"``), then bias
    correction (``bias_correction``); a no-op for recipes that use none of these."""
    recalibrate_edges(graph, recipe, act_qp, calib)
    widen_activations(graph, recipe, act_qp)  # act16: 16-bit residual stream (edgequant.act16)
    recalibrate_binary(graph, recipe, act_qp, calib)
    clip_search_step(graph, recipe, act_qp, calib)
    return bias_correction_step(graph, recipe, act_qp, calib, bits_of=lambda n: node_bits(graph, recipe, n)[0])
