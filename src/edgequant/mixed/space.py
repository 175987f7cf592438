"""The search space: which layers get a width, which widths, and the recipe an assignment means.

A *unit* is one conv/linear module of the captured graph (all of its graph nodes move together,
because a ``LayerOverride`` matches module paths). An *option* is a (weight_bits, act_bits) pair;
``act_bits`` is the width of the unit's output tensor(s). An assignment (unit -> option) becomes
a frozen ``Recipe``: the base recipe plus one exact-match ``LayerOverride`` per unit, so that
``quantize`` reproduces it and the artifact stores it like any other recipe.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from ..errors import RecipeError
from ..ir import Graph
from ..recipes import LayerOverride, Recipe, get_recipe

Option = tuple[int, int]  # (weight_bits, act_bits)
Assignment = dict[str, Option]  # unit (module path) -> option
GEMM_OPS = ("conv", "linear")


def escape(module: str) -> str:
    """An fnmatch pattern matching exactly ``module`` (``*?[`` taken literally)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in module)


def units(graph: Graph) -> list[str]:
    """Module paths of the conv/linear layers, in graph order (one entry per module)."""
    mods = [n.module for n in graph.nodes if n.op in GEMM_OPS]
    if any(not m for m in mods):
        bad = [n.name for n in graph.nodes if n.op in GEMM_OPS and not n.module]
        raise RecipeError(f"layers {bad} have no module path, so a per-layer width cannot name them; build the "
                          "model from nn.Conv*/nn.Linear modules instead of functional calls")
    return list(dict.fromkeys(mods))


def search_base(base: "str | Recipe | None") -> Recipe:
    """The recipe the search widens and narrows per layer.

    ``None``: ``w8a8-pc`` with an MSE weight clip and XNOR for 1-bit layers. Why: one clip rule
    must suit every width a layer may get; on the digits CNN uniform W2 with the min/max clip
    scores 85.7% and with the MSE clip 98.5% (identical at W8/W4), and ``xnor`` only changes
    layers given 1 bit (others use the observer).
    """
    if base is None:
        r = get_recipe("w8a8-pc")
        opts = tuple(o for o in r.options if o[0] != "weight_method") + (("weight_method", "xnor"),)
        return dataclasses.replace(r, name="w8a8-pc-mse", weights=dataclasses.replace(r.weights, observer="mse"),
                                   options=opts, description="w8a8-pc with MSE weight clips (search base)")
    r = get_recipe(base)
    if r.mode != "static":
        raise RecipeError(f"search base {r.name!r} is {r.mode}; mixed precision searches integer-only programs: "
                          "pass a static recipe such as 'w8a8-pc'")
    if r.option("reconstruct") is not None or r.option("training") == "qat":
        raise RecipeError(f"search base {r.name!r} reconstructs or trains; the search quantizes many candidates, so "
                          "give it a post-training recipe such as 'w8a8-pc'")
    return r


def options(widths, act_widths) -> list[Option]:
    """Every (weight_bits, act_bits) pair, widest first (the first is the safe default)."""
    ws, acts = _widths(widths, "widths"), _widths(act_widths, "act_widths")
    return [(w, a) for w, a in itertools.product(ws, acts)]


def _widths(v, what: str) -> list[int]:
    try:
        ws = sorted({int(b) for b in v}, reverse=True)
    except (TypeError, ValueError):
        raise RecipeError(f"{what}={v!r}: give a sequence of bit widths, e.g. (8, 4, 2)") from None
    if not ws or any(b < 1 or b > 8 for b in ws) or any(isinstance(b, bool) for b in v):
        raise RecipeError(f"{what}={v!r}: widths must be integers in 1..8 (int8 containers), e.g. (8, 4, 2)")
    return ws


def recipe_for(base: Recipe, assignment: Assignment, name: str, description: str = "") -> Recipe:
    """``base`` with one exact-match override per unit (every unit named, so the recipe is explicit)."""
    ov = tuple(LayerOverride(escape(u), weight_bits=w, act_bits=a) for u, (w, a) in assignment.items())
    return dataclasses.replace(base, name=name, overrides=ov, description=description or base.description)


@dataclass(frozen=True)
class Space:
    base: Recipe
    units: tuple[str, ...]
    options: tuple[Option, ...]

    def uniform(self, option: Option) -> Assignment:
        return {u: option for u in self.units}

    @property
    def widest(self) -> Option:
        return self.options[0]

    def wider(self, option: Option) -> list[Option]:
        """One step up: weights one width wider, or activations one width wider (those that exist)."""
        ws = sorted({w for w, _ in self.options})
        acts = sorted({a for _, a in self.options})
        w, a = option
        out = []
        if w != ws[-1]:
            out.append((ws[ws.index(w) + 1], a))
        if a != acts[-1]:
            out.append((w, acts[acts.index(a) + 1]))
        return out
