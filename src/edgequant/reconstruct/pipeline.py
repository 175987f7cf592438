"""How reconstruction plugs into ``edgequant.quantize``: a PTQ step, a weight method, recipes.

* The PTQ step ``reconstruct_step`` (in ``api.PTQ_STEPS``) runs when a recipe has the option
  ``("reconstruct", "adaround" | "brecq" | "gptq")``. For every conv/linear it asks the recipe's base weight
  method (option ``reconstruct_base``, default ``"observer"``; any ``WEIGHT_METHODS`` entry, e.g.
  ACIQ or per-channel bit allocation) for the scale and integers at that layer's own width (after
  ``LayerOverride``s), learns the rounding on that grid, and stores the integers on the node
  (``attrs["learned_weight"]``, ``["learned_scale"]``, ``["learned_bits"]``).
* The weight method ``"learned_rounding"`` returns exactly those integers, so ``lower()`` emits
  them unchanged. A node without them (1-bit layers, which have no up/down choice, or a graph
  lowered without the step) gets the base method's integers.
* Each channel's integers stay inside the base method's range for that channel (``|q| <=
  max|q_base|``), so a per-channel bit allocation keeps its widths and packed size.

Options (all optional): ``iterations`` (the budget knob, per layer for AdaRound, per block for
BRECQ), ``batch_size``, ``lr``, ``reg_lambda``, ``qdrop``, ``calib_samples``, ``max_layers``,
``memory_mb``, ``cache_dir``, ``seed``, ``damp``, ``act_order`` and ``sequential`` (GPTQ; the last on
transformers, ``gptq_graph.py``: the unit pipeline is sequential already), ``weight_group`` (group-wise scales, ``lowbit/groups.py``: GPTQ
rounds on the group grid; AdaRound/BRECQ refuse it), ``requant`` ("gemmlowp": the sim rounds conv/linear/mean
outputs twice as ``q.run`` does by default, bit-exact per layer; "exact": once, as
``rounding="onnxruntime"``), ``learn_act_scale`` (BRECQ: learn the activation steps inside each
unit; default on for brecq, off for adaround), ``act_lr``, ``progress`` (None = when stderr is a
terminal). The learned activation steps are written into the step's ``act_qp`` in place, so
``lower()`` gives the program the grids the rounding was fitted to.

``bias_correction`` is rejected: it would change the float targets the rounding is fitted to.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import RecipeError
from ..heap import reusing_heap
from ..ir import Graph, Node
from ..lowbit.edges import node_bits
from ..qmath import QParams
from ..recipes import Recipe, get_recipe
from ..weight_quant import WEIGHT_METHODS, register_weight_method
from .blocks import GEMM_OPS
from .brecq import ReconConfig, ReconResult, WeightGrid, reconstruct_graph

METHODS = ("adaround", "brecq", "gptq")
LEARNED = "learned_rounding"
_CONFIG_KEYS = {f.name for f in dataclasses.fields(ReconConfig)} - {"method"}

# The last reconstruction's per-unit report (``quantize`` below copies it into ``program.meta``).
LAST_RESULT: ReconResult | None = None


def config_from_recipe(recipe: Recipe) -> ReconConfig:
    method = recipe.option("reconstruct")
    if method not in METHODS:
        raise RecipeError(f"recipe {recipe.name!r}: option reconstruct={method!r}; use one of {METHODS}")
    kw = {k: v for k, v in recipe.options if k in _CONFIG_KEYS}
    cfg = ReconConfig(method=method, **kw)
    if cfg.iterations < 1 or cfg.batch_size < 1:
        raise RecipeError(f"recipe {recipe.name!r}: iterations={cfg.iterations} and batch_size={cfg.batch_size} must be >= 1")
    if cfg.learn_act_scale and method == "adaround":
        raise RecipeError(f"recipe {recipe.name!r}: learn_act_scale needs reconstruct='brecq' (AdaRound's layer "
                          "objective keeps activations in float, so there is no activation step to learn)")
    if method == "gptq" and (cfg.learn_act_scale or cfg.qdrop):
        raise RecipeError(f"recipe {recipe.name!r}: learn_act_scale and qdrop belong to BRECQ's training loop; "
                          "GPTQ rounds in one pass with the calibrated activation grids")
    if recipe.option("weight_group") and method != "gptq":
        raise RecipeError(f"recipe {recipe.name!r}: weight_group (group-wise scales) works with reconstruct='gptq' "
                          f"or nearest rounding; {method} learns the rounding on per-channel scales")
    if not 0.0 <= cfg.damp < 1.0:
        raise RecipeError(f"recipe {recipe.name!r}: damp={cfg.damp} is a fraction of the Hessian's mean diagonal in [0, 1)")
    if not 0.0 <= cfg.qdrop < 1.0:
        raise RecipeError(f"recipe {recipe.name!r}: qdrop={cfg.qdrop} is a probability in [0, 1)")
    return cfg


def _base_method(recipe: Recipe) -> str:
    base = recipe.option("reconstruct_base", "observer")
    if base == LEARNED or base not in WEIGHT_METHODS:
        raise RecipeError(f"recipe {recipe.name!r}: reconstruct_base={base!r} must be another weight method; "
                          f"known: {sorted(m for m in WEIGHT_METHODS if m != LEARNED)}")
    return base


def weight_grid(node: Node, recipe: Recipe, bits: int) -> WeightGrid:
    """The base method's scale, and per-channel bounds ``+-max|q_base|`` (its range per channel)."""
    res = WEIGHT_METHODS[_base_method(recipe)](node, recipe, bits)
    q0, scale = res[0], res[1]
    hi = np.abs(q0.astype(np.int64)).reshape(q0.shape[0], -1).max(axis=1).astype(np.float32)
    extra = dict(res[2]) if len(res) > 2 else {}  # e.g. bit allocation's channel_bits / packed size
    return WeightGrid(np.asarray(scale, np.float32).reshape(-1), -hi, hi, bits, extra)


@register_weight_method(LEARNED)
def learned_weights(node: Node, recipe: Recipe, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The integers reconstruction learned for this node, else the base method's."""
    if "learned_weight" not in node.attrs:
        return WEIGHT_METHODS[_base_method(recipe)](node, recipe, bits)
    if node.attrs["learned_bits"] != bits:
        raise RecipeError(f"{node.describe()}: rounding was learned at {node.attrs['learned_bits']} bits but the recipe "
                          f"{recipe.name!r} lowers it at {bits}; quantize again with this recipe")
    return node.attrs["learned_weight"], node.attrs["learned_scale"], dict(node.attrs.get("learned_extra", {}))


UNIT_UNSUPPORTED = ("matmul", "softmax", "layernorm", "transpose", "rnn", "embedding", "reduce", "maskmul")


def needs_graph_pass(graph: Graph) -> bool:
    """A graph the unit pipeline cannot cut (attention, LayerNorm, token inputs, linear on (N, L, D))."""
    return any(n.op in UNIT_UNSUPPORTED or (n.op == "linear" and len(n.shape) > 2) for n in graph.nodes)


def reconstruct_step(graph: Graph, recipe: Recipe, act_qp: dict[str, QParams] | None, calib: Iterable | None) -> Graph:
    """PTQ step: learn the weight rounding when the recipe asks for it (else the graph unchanged)."""
    global LAST_RESULT
    if recipe.option("reconstruct") is None:
        return graph
    cfg = config_from_recipe(recipe)
    if recipe.mode == "dynamic" and cfg.method == "gptq" and calib is not None:
        act_qp = {}  # run-time activation scales: GPTQ's Hessians of the float inputs
    elif recipe.mode != "static" or act_qp is None or calib is None:
        raise RecipeError(f"recipe {recipe.name!r}: reconstruction needs a static recipe (or GPTQ in a dynamic one) "
                          "and calibration data")
    if recipe.option("weight_method", "observer") != LEARNED:
        raise RecipeError(f"recipe {recipe.name!r}: reconstruction needs option weight_method={LEARNED!r} so the "
                          "program gets the learned integers")
    if recipe.option("bias_correction") not in (None, False, "none"):
        raise RecipeError(f"recipe {recipe.name!r}: bias_correction with reconstruction would fit the rounding to "
                          "corrected biases and then rescale it; reconstruction already fits each output, so drop "
                          "the bias_correction option")
    g = graph.copy()
    grids = {}
    for n in g.nodes:
        if n.op not in GEMM_OPS:
            continue
        wb, _ = node_bits(g, recipe, n)  # overrides and the first/last-layer rule, as lowering does
        if wb is not None and wb >= 2:
            grids[n.name] = weight_grid(n, recipe, wb)
    if cfg.method == "gptq" and (needs_graph_pass(g) or not act_qp):  # transformers, dynamic: one pass (gptq_graph.py)
        from .gptq_graph import gptq_graph

        res = gptq_graph(g, act_qp, grids, calib, cfg)
    else:
        with reusing_heap():  # per-step training buffers: reuse the heap (heap.py measured why)
            res = reconstruct_graph(g, act_qp, grids, calib, cfg, progress=recipe.option("progress"))
    act_qp.update(res.act_qp)  # learned activation steps: the grids lower() gives the program (in place, as lowbit_step)
    for n in g.nodes:
        if n.name in res.weights:
            q, scale, bits = res.weights[n.name]
            n.attrs.update(learned_weight=q, learned_scale=scale, learned_bits=bits, learned_extra=grids[n.name].extra)
    LAST_RESULT = res
    return g


def report_meta() -> dict:
    """The last reconstruction's report for ``program.meta["reconstruct"]``: total and per-unit
    (and per-layer) seconds, losses, the peak disk the boundary tensors took."""
    if LAST_RESULT is None:
        return {}
    return {"seconds": LAST_RESULT.seconds, "disk_bytes_peak": LAST_RESULT.disk_bytes_peak,
            "units": [dataclasses.asdict(u) for u in LAST_RESULT.units]}


def with_options(recipe: str | Recipe, **options: Any) -> Recipe:
    """A copy of ``recipe`` with options replaced (``None`` values are ignored)."""
    r = get_recipe(recipe)
    opts = dict(r.options)
    opts.update({k: v for k, v in options.items() if v is not None})
    return dataclasses.replace(r, options=tuple(opts.items()))


def quantize(model: torch.nn.Module, recipe: str | Recipe, calib: Iterable, example_input: torch.Tensor | None = None,
             iterations: int | None = None, progress: bool | None = None, **options: Any):
    """``edgequant.quantize`` with the reconstruction budget as arguments: ``iterations`` per layer
    (AdaRound) or per block (BRECQ); ``progress`` True/False (None: on a terminal). The per-unit
    report (losses, seconds) lands in ``q.program.meta["reconstruct"]``."""
    from ..api import quantize as _quantize

    r = with_options(recipe, iterations=iterations, progress=progress, **options)
    return _quantize(model, r, calib, example_input)  # it records report_meta() in program.meta
