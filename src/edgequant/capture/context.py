"""The capture state and the one handler table every ``capture`` op module registers into.

``HANDLERS[aten_op](ctx, fx, args)`` translates one ATen call into an IR ``Node`` (or ``None`` for an
alias). Op modules import only this module and add their entries; the package ``__init__`` imports
them, so this module never imports them back.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import UnsupportedOpError
from ..ir import Node


aten = torch.ops.aten


IDENTITY = {
    aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.detach.default,
    aten.alias.default, aten.feature_dropout.default, aten.alpha_dropout.default,
    aten.lift_fresh_copy.default, aten._assert_tensor_metadata.default,
}


def pair(v, n: int = 2) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        v = list(v)
        return tuple(v * n) if len(v) == 1 else tuple(v)
    return (v,) * n


def pad4(p) -> tuple[int, int, int, int]:
    """torch (ph, pw) padding -> (top, bottom, left, right)."""
    ph, pw = pair(p)
    return (ph, ph, pw, pw)


class Ctx:
    """What capture knows while walking the exported graph: constants, aliases, the IR so far."""

    def __init__(self, ep: torch.export.ExportedProgram, batch: int) -> None:
        sig = ep.graph_signature
        self.state = {**ep.state_dict, **getattr(ep, "constants", {})}
        self.param_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        self.param_of.update(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
        self.nodes: list[Node] = []
        self.alias: dict[str, str] = {}  # fx node name -> IR node name (identity ops)
        self.batch = batch
        self.consts: dict[str, object] = {}  # fx node name -> value computed from constants only (capture.shape)
        self.splits: dict[str, tuple] = {}  # chunk/split/unbind fx node -> its slices (capture.shape)
        self.const_nodes: set[str] = set()

    def is_param(self, a) -> bool:
        """A parameter, buffer, lifted constant, or a value computed from those alone."""
        return isinstance(a, torch.fx.Node) and (a.name in self.param_of or a.name in self.consts)

    is_const = is_param

    def const_tensor(self, a) -> torch.Tensor:
        return self.consts[a.name] if a.name in self.consts else self.state[self.param_of[a.name]]

    def param(self, a) -> np.ndarray:
        t = self.const_tensor(a)
        if not isinstance(t, torch.Tensor):
            raise UnsupportedOpError(f"'{a.name}' is a {type(t).__name__} of constants, not one tensor")
        return t.detach().cpu().float().numpy().copy()

    def param_module(self, a) -> str:
        if a.name not in self.param_of:
            return ""
        return self.param_of[a.name].rsplit(".", 1)[0] if "." in self.param_of[a.name] else ""

    def ref(self, a, fx: torch.fx.Node) -> str:
        if not isinstance(a, torch.fx.Node) or self.is_param(a):
            raise UnsupportedOpError(
                f"node '{fx.name}' ({fx.target}) takes a constant or parameter where edgequant "
                "expects an activation; rewrite the model so the op's inputs are activations"
            )
        return self.alias.get(a.name, a.name)


def module_path(fx: torch.fx.Node) -> str:
    stack = fx.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self___", "")


def fx_shape(fx: torch.fx.Node) -> tuple[int, ...]:
    v = fx.meta.get("val")
    return tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else ()


Handler = Callable[..., "Node | None"]
HANDLERS: dict[object, Handler] = {}
