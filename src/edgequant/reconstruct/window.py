"""Spatial windows: a reconstruction step on a random crop of the output, not the whole map.

At ImageNet resolution one step through a 120x120 layer at batch 32 costs ~0.7 CPU-s, so a few
hundred steps per layer take hours on a laptop. A step's loss is a mean over samples *and*
positions; it is estimated just as well (same expectation) from a random window of positions, and
the cost of the step is then bounded by the window, not the map. ``ReconConfig.window`` is the
number of output positions per sample a step may use (default 784, a 28x28 map): a unit whose
output map is no larger trains on the whole map exactly as before (so small nets are unchanged);
a larger one trains each step on one ``h x w`` window (``h * w <= window``, the map's aspect ratio)
shared by the batch's samples, at a fresh random place each step.

Exactness: the window's output is the full output's corresponding region, bit for bit. Each
tensor inside the unit is computed only on the region its consumers read (the unit entry is read
from the cache on that region: the receptive-field halo of every conv, grown through the unit);
a conv pads with zeros only where its (unclipped) input region leaves the map, i.e. exactly where
the full map's own zero padding is; elementwise nodes (activations, ``add``, fake quantization,
QDrop masks) act per position. Units with anything else (global pooling, linear, reshape, ...)
train on the whole map.

Unbiasedness: the window's top-left corner is drawn uniformly from ``[-(h-1), H-1]`` (and likewise
for columns) and the window is clipped to the map, so every position is covered with the same
probability ``h / (H + h - 1)``; the loss over the window is scaled by the inverse of the coverage
probability, so its expectation over windows is the full-map loss (``crop_scale``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..graph_exec import _act
from ..ir import Node

DEFAULT_WINDOW = 784  # output positions per sample per step: a 28x28 map (one step ~ a 28x28 layer)
LOCAL_OPS = ("conv", "pad", "add", "clamp", "unary", "mul")

Box = tuple[int, int, int, int]  # rows [r0, r1), cols [c0, c1) in a tensor's own coordinates


@dataclass(frozen=True)
class Window:
    """The output box of one step and the box every tensor of the unit is computed on."""

    out: Box
    boxes: dict[str, Box]
    scale: float  # 1 / coverage probability: makes the windowed loss an unbiased full-map loss


def window_shape(h: int, w: int, area: int) -> tuple[int, int]:
    """The ``(wh, ww)`` window (``wh * ww <= area``, about the map's aspect ratio), or (h, w) when the map fits."""
    if area <= 0 or h * w <= area:
        return h, w
    r = math.sqrt(area / (h * w))
    wh, ww = max(1, min(h, int(h * r))), max(1, min(w, int(w * r)))
    return wh, ww


def crop_scale(h: int, w: int, wh: int, ww: int) -> float:
    """Inverse coverage probability of a position under ``sample_box`` (1 when the window is the map)."""
    if (wh, ww) == (h, w):
        return 1.0
    return (h + wh - 1) * (w + ww - 1) / (wh * ww)


def sample_box(h: int, w: int, wh: int, ww: int, rng: np.random.Generator) -> Box:
    """A window of at most ``wh x ww`` with its corner uniform on ``[-(wh-1), h-1] x [-(ww-1), w-1]``,
    clipped to the map (every position covered with equal probability)."""
    if (wh, ww) == (h, w):
        return 0, h, 0, w
    r = int(rng.integers(-(wh - 1), h))
    c = int(rng.integers(-(ww - 1), w))
    return max(r, 0), min(r + wh, h), max(c, 0), min(c + ww, w)


def windowable(nodes, entry_shape: tuple[int, ...]) -> bool:
    """Whether every node is position-local on 2-D maps (then a window of the output is exact)."""
    if len(entry_shape) != 4:
        return False
    shapes = {n.name: tuple(n.shape) for n in nodes}
    for n in nodes:
        if n.op not in LOCAL_OPS or len(n.shape) != 4:
            return False
        if n.op == "conv" and n.attrs.get("dims", 2) != 2:
            return False
        if n.op == "pad" and (len(n.attrs["pads"]) != 4 or any(n.attrs["pads"][0]) or any(n.attrs["pads"][1])
                              or min(v for pr in n.attrs["pads"] for v in pr) < 0):
            return False  # only non-negative padding of the map's rows and columns
        if n.op not in ("conv", "pad") and any(tuple(shapes.get(a, entry_shape))[2:] != tuple(n.shape)[2:] for a in n.inputs):
            return False  # a broadcast operand (e.g. a squeeze-excite scale): not per position
    return True


def _conv_need(n: Node, box: Box) -> tuple[int, int, int, int]:
    """The (unclipped) input rows/cols a conv (or pad) reads for the output ``box``."""
    if n.op == "pad":
        (t, _), (l, _) = n.attrs["pads"][2:]
        return box[0] - t, box[1] - t, box[2] - l, box[3] - l
    sh, sw = n.attrs["stride"]
    dh, dw = n.attrs["dilation"]
    kh, kw = n.params["weight"].shape[2:]
    t, _, l, _ = n.attrs["padding"]
    r0, r1, c0, c1 = box
    return (r0 * sh - t, (r1 - 1) * sh - t + (kh - 1) * dh + 1, c0 * sw - l, (c1 - 1) * sw - l + (kw - 1) * dw + 1)


def plan(nodes, entry: str, shapes: dict[str, tuple[int, ...]], out: Box) -> dict[str, Box]:
    """The box each tensor (the entry included) must be computed on so the last node's ``out`` box
    is exact: the bounding box of what its consumers read, clipped to the tensor's map."""
    boxes: dict[str, Box] = {nodes[-1].name: out}

    def need(name: str, b) -> None:
        h, w = shapes[name][2:]
        b = (max(b[0], 0), min(b[1], h), max(b[2], 0), min(b[3], w))
        old = boxes.get(name)
        boxes[name] = b if old is None else (min(old[0], b[0]), max(old[1], b[1]), min(old[2], b[2]), max(old[3], b[3]))

    for n in reversed(nodes):
        box = boxes.get(n.name)
        if box is None:  # nothing in the unit reads it (cannot happen in a unit): compute nothing
            continue
        for a in n.inputs:
            need(a, _conv_need(n, box) if n.op in ("conv", "pad") else box)
    if entry not in boxes:
        boxes[entry] = out
    return boxes


def sample_window(nodes, entry: str, shapes: dict[str, tuple[int, ...]], area: int,
                  rng: np.random.Generator) -> Window | None:
    """A random window for one step, or None when the unit trains on the whole map."""
    if area <= 0 or not windowable(nodes, shapes[entry]):
        return None
    h, w = shapes[nodes[-1].name][2:]
    wh, ww = window_shape(h, w, area)
    if (wh, ww) == (h, w):
        return None
    out = sample_box(h, w, wh, ww, rng)
    return Window(out, plan(nodes, entry, shapes, out), crop_scale(h, w, wh, ww))


def crop(x: torch.Tensor, have: Box, want: Box) -> torch.Tensor:
    """The ``want`` box of a tensor that holds the ``have`` box (both in map coordinates)."""
    if have == want:
        return x
    return x[:, :, want[0] - have[0] : want[1] - have[0], want[2] - have[2] : want[3] - have[2]]


def conv_window(n: Node, x: torch.Tensor, have: Box, out: Box, shape: tuple[int, ...], params: dict) -> torch.Tensor:
    """A conv's ``out`` box from its input held on ``have``: the input rows/cols it reads, zeros
    where they leave the map (the conv's own padding), then the conv without padding."""
    a0, a1, b0, b1 = _conv_need(n, out)
    h, w = shape[2:]
    inner = (max(a0, 0), min(a1, h), max(b0, 0), min(b1, w))
    x = crop(x, have, inner)
    pads = (inner[2] - b0, b1 - inner[3], inner[0] - a0, a1 - inner[1])
    if n.op == "pad":  # its own value outside the map
        return F.pad(x, pads, value=n.attrs["value"]) if any(pads) else x
    if any(pads):
        x = F.pad(x, pads)
    y = F.conv2d(x, params["weight"], params.get("bias"), tuple(n.attrs["stride"]), 0, tuple(n.attrs["dilation"]),
                 n.attrs["groups"])
    return _act(y, n)
