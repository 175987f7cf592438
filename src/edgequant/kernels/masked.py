"""Kernels of the ops that read integer inputs (token ids, padding masks); semantics in ``masking``.

Integer forms ("gemmlowp", integer-only):

* ``embedding``: the int8 (act16 "all": int16) table is stored on the output grid (``round(W / s_y) + z_y``), so the
  lookup is a pure gather -- exact, and ONNX/TFLite ``Gather`` on int8 computes the same.
* ``softmax_masked``: ``kernels.transformer``'s integer softmax with masked keys left out: the row
  max is over kept keys, masked keys contribute ``e = 0`` to the int64 sum and come out as
  ``qmin`` (probability 0 exactly).
* ``maskmul``: ``x`` where kept, else the zero point (real 0): data movement.
* ``reduce``: ``acc = sum(x - z_x)`` over the dims (int64, exact), requantized by
  ``M = s_x / s_y`` (``/ n`` for a mean) with the shared requantization. Masked mean: ``acc`` over
  kept positions and ``y = z_y + round_half_away(acc * M0 / (c * 2^(31 - shift)))`` with ``c`` the
  kept count per sample (>= 1): one exact integer division, so the per-sample divisor costs no
  second rounding. |acc| < 2^8 * L and M0 < 2^31 keep the product inside int64 for L < 2^24.

The "onnxruntime" mode computes what ONNX Runtime runs for the exported graph (``export/onnx/masked``):
the reduce in float32 with round-half-even (``rint(acc * M / c)``, exported as exactly that), the masked
softmax as ``DQ -> Where(mask, x, lowest) -> Softmax -> Q`` in float32 (``wide_ort.softmax``; no
fused quantized kernel takes the mask, at 8 or 16 bits).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import masking, qmath
from ..wide import container_dtype
from . import RUN, SIM, register, wide_ort
from .context import KernelContext
from .transformer import EXP_FRAC_BITS, softmax_from_exp  # noqa: F401  (the exp table's Q format, documented there)


def _keep(mask: np.ndarray, view, shape) -> np.ndarray:
    m = np.asarray(mask)
    return np.broadcast_to(m.reshape((m.shape[0], *view)) != 0, shape)


# -- embedding ------------------------------------------------------------------------------------
@register("embedding", RUN)
def embedding_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    table = instr.arrays["table"]  # (V, D) int8 on the output grid
    ids = np.asarray(inputs[0], np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        from ..errors import InputError

        raise InputError(f"token ids in {instr.inputs[0]!r} range over [{ids.min()}, {ids.max()}]; the embedding "
                         f"table of {instr.node!r} has {table.shape[0]} rows")
    return table[ids]


@register("embedding", SIM)
def embedding_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    qp = ctx.qp(instr.output)
    t = (torch.as_tensor(instr.arrays["table"], dtype=torch.float64) - int(qp.zero_point)) * float(qp.scale)
    return masking.embedding(inputs[0], t)


@register("embedding_f", RUN)
def embedding_f_run(instr, inputs, ctx) -> np.ndarray:
    return instr.arrays["weight"].astype(np.float32)[np.asarray(inputs[0], np.int64)]


@register("embedding_f", SIM)
def embedding_f_sim(instr, inputs, ctx) -> torch.Tensor:
    return masking.embedding(inputs[0], torch.as_tensor(instr.arrays["weight"], dtype=torch.float64))


# -- masked softmax -------------------------------------------------------------------------------
@register("softmax_masked", RUN)
def softmax_masked_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    x = inputs[0]
    keep = _keep(inputs[1], instr.attrs["mask_view"], x.shape)
    if ctx.rounding == "onnxruntime":  # the exported DQ -> Where(mask) -> Softmax -> Q (no fused kernel), float32
        return wide_ort.softmax(instr, x, ctx, keep)
    qy = ctx.qp(instr.output)
    zy = int(qy.zero_point)
    xi = x.astype(np.int64)
    big = np.where(keep, xi, np.int64(-(1 << 40)))
    mx = big.max(axis=-1, keepdims=True)  # max over kept keys (a row keeps at least one)
    table = instr.arrays["exp_table"].astype(np.int64)
    k = np.clip(mx - xi, 0, table.shape[0] - 1)
    e = np.where(keep, table[k], 0)  # Q20; masked keys: 0
    return softmax_from_exp(e, instr, qy)


@register("softmax_masked", SIM)
def softmax_masked_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    return ctx.fq(masking.softmax(inputs[0], torch.as_tensor(inputs[1]), instr.attrs["mask_view"]), instr.output)


@register("softmax_masked_f", RUN)
def softmax_masked_f_run(instr, inputs, ctx) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(inputs[0], np.float32))
    return masking.softmax(x, torch.as_tensor(inputs[1]), instr.attrs["mask_view"]).numpy()


@register("softmax_masked_f", SIM)
def softmax_masked_f_sim(instr, inputs, ctx) -> torch.Tensor:
    return masking.softmax(inputs[0], torch.as_tensor(inputs[1]), instr.attrs["mask_view"])


# -- maskmul ---------------------------------------------------------------------------------------
@register("maskmul", RUN)
def maskmul_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    x = inputs[0]
    if x.dtype == np.int8:
        return np.where(_keep(inputs[1], instr.attrs["mask_view"], x.shape), x,
                        np.int8(int(ctx.qp(instr.inputs[0]).zero_point)))
    return np.where(_keep(inputs[1], instr.attrs["mask_view"], x.shape), x, np.float32(0)).astype(np.float32)


@register("maskmul", SIM)
def maskmul_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    return masking.maskmul(inputs[0], torch.as_tensor(inputs[1]), instr.attrs["mask_view"])


# -- reduce ----------------------------------------------------------------------------------------
def _masked_divide(acc: np.ndarray, count: np.ndarray, instr, ctx: KernelContext) -> np.ndarray:
    qy = ctx.qp(instr.output)
    if ctx.rounding == "onnxruntime":
        v = (acc.astype(np.float32) * instr.arrays["multiplier"][0]) / count.astype(np.float32)
        q = np.rint(v).astype(np.int64)
    else:
        m0, shift = int(instr.arrays["m0"][0]), int(instr.arrays["shift"][0])
        num = acc.astype(np.int64) * m0
        right = 31 - shift  # in [1, 62]
        if right > 40:  # keep count << right inside int64: pre-shift the numerator, rounding half away
            pre = right - 40
            num = np.sign(num) * ((np.abs(num) + (np.int64(1) << (pre - 1))) >> pre)
            right = 40
        den = count.astype(np.int64) << right
        q = np.sign(num) * ((2 * np.abs(num) + den) // (2 * den))
    return np.clip(q + int(qy.zero_point), qy.qmin, qy.qmax).astype(container_dtype(qy.bits))


@register("reduce", RUN)
def reduce_run(instr, inputs, ctx: KernelContext) -> np.ndarray:
    a = instr.attrs
    qx, qy = ctx.qp(instr.inputs[0]), ctx.qp(instr.output)
    x = inputs[0].astype(np.int64) - int(qx.zero_point)
    dims, keepdim = tuple(a["dims"]), bool(a["keepdim"])
    if len(inputs) > 1:
        keep = _keep(inputs[1], a["mask_view"], x.shape)
        acc = np.where(keep, x, 0).sum(axis=dims, keepdims=keepdim)
        count = np.maximum(keep.sum(axis=dims, keepdims=keepdim), 1)
        return _masked_divide(acc, count, instr, ctx)
    acc = x.sum(axis=dims, keepdims=keepdim)
    y = qmath.requantize(acc, m0=instr.arrays["m0"], shift=instr.arrays["shift"], real_multiplier=instr.arrays["multiplier"],
                         zero_point=int(qy.zero_point), qmin=qy.qmin, qmax=qy.qmax, rounding=ctx.requant_rounding(instr))
    return y.astype(container_dtype(qy.bits))


@register("reduce", SIM)
def reduce_sim(instr, inputs, ctx: KernelContext) -> torch.Tensor:
    mask = torch.as_tensor(inputs[1]) if len(inputs) > 1 else None
    return ctx.fq(masking.reduce(inputs[0], instr.attrs, mask), instr.output)


@register("reduce_f", RUN)
def reduce_f_run(instr, inputs, ctx) -> np.ndarray:
    mask = torch.as_tensor(inputs[1]) if len(inputs) > 1 else None
    return masking.reduce(torch.from_numpy(np.ascontiguousarray(inputs[0], np.float32)), instr.attrs, mask).numpy()


@register("reduce_f", SIM)
def reduce_f_sim(instr, inputs, ctx) -> torch.Tensor:
    mask = torch.as_tensor(inputs[1]) if len(inputs) > 1 else None
    return masking.reduce(inputs[0], instr.attrs, mask)
