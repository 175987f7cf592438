"""``nn.MultiheadAttention`` rewritten, before tracing, into the batch-first ops edgequant captures.

Why: PyTorch's implementation works sequence-first inside (transposes that move the batch dim,
``scaled_dot_product_attention`` on (N*h, T, d)), while edgequant keeps dim 0 the batch. The
replacement computes the same function from the same parameters (eval semantics: no dropout)
with Linear, view/transpose, matmul and softmax over the last axis, which capture already
quantizes (the ``1/sqrt(head_dim)`` folds into the scores' matmul, ``passes.fold_matmul_scale``).
The packed input projection becomes three Linears (the same rows), so q, k and v get their own
activation scales. Only ``batch_first=True`` modules are replaced (their inputs hold the batch in
dim 0); masks, ``bias_k``/``bias_v`` and ``add_zero_attn`` are refused by name. The user's model is
never modified: a copy is.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..errors import UnsupportedOpError


def _linear(w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return lin


class BatchFirstAttention(nn.Module):
    """The function of an ``nn.MultiheadAttention(batch_first=True)`` in eval mode, spelled in plain ops."""

    def __init__(self, m: nn.MultiheadAttention, name: str) -> None:
        super().__init__()
        self.name, self.h, self.d, self.hd = name, m.num_heads, m.embed_dim, m.head_dim
        d = m.embed_dim
        if m._qkv_same_embed_dim:
            wq, wk, wv = m.in_proj_weight[:d], m.in_proj_weight[d:2 * d], m.in_proj_weight[2 * d:]
        else:
            wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        b = m.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:d], b[d:2 * d], b[2 * d:])
        self.q, self.k, self.v = _linear(wq, bq), _linear(wk, bk), _linear(wv, bv)
        self.out_proj = _linear(m.out_proj.weight, m.out_proj.bias)
        # attributes nn.TransformerEncoderLayer reads to decide on its fused fast path (which this must not take)
        self.batch_first, self._qkv_same_embed_dim, self.in_proj_bias, self.in_proj_weight = True, False, None, None

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise UnsupportedOpError(f"module '{self.name}' (nn.MultiheadAttention) is called with an attention mask; "
                                     "edgequant quantizes unmasked self-/cross-attention only")
        n, t, s = query.shape[0], query.shape[1], key.shape[1]
        q = self.q(query).view(n, t, self.h, self.hd).transpose(1, 2)  # (N, h, T, hd)
        k = self.k(key).view(n, s, self.h, self.hd).transpose(1, 2)
        v = self.v(value).view(n, s, self.h, self.hd).transpose(1, 2)
        a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (self.hd ** -0.5), dim=-1)  # (N, h, T, S)
        y = self.out_proj(torch.matmul(a, v).transpose(1, 2).reshape(n, t, self.d))
        if not need_weights:
            return y, None
        return y, (a.mean(dim=1) if average_attn_weights else a)


def batch_first_attention(model: nn.Module) -> nn.Module:
    """``model`` itself when it holds no ``nn.MultiheadAttention``, else a copy with each replaced."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) and name]
    if not names:
        return model
    model = copy.deepcopy(model)
    for name in names:
        m = model.get_submodule(name)
        if not m.batch_first:
            raise UnsupportedOpError(f"module '{name}' is nn.MultiheadAttention(batch_first=False): its inputs are "
                                     "(T, N, d), sequence first, and edgequant needs the batch in dim 0 -- construct it "
                                     "with batch_first=True and pass (N, T, d)")
        if m.bias_k is not None or m.add_zero_attn:
            raise UnsupportedOpError(f"module '{name}' (nn.MultiheadAttention) uses add_bias_kv/add_zero_attn, which "
                                     "edgequant does not capture")
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, BatchFirstAttention(m, name))
    return model
