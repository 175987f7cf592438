"""Capture an ``nn.Module`` into a QGraph with ``torch.export``: ``capture(model, example)``.

``context`` holds the capture state and the one ATen-op -> handler table; each op module
(``gemm``, ``elementwise``, ``layout``, ``transformer``, ``shape``, ``rnn``, ``hf``) registers its
handlers there; ``trace`` walks the exported graph through the table. ``mha`` and ``rnn`` also
rewrite modules before tracing (``nn.MultiheadAttention``, ``nn.LSTM``/``nn.GRU``).
"""
from __future__ import annotations

from . import gemm, elementwise, layout, transformer, shape, rnn, hf  # noqa: F401  (fill HANDLERS)
from .context import HANDLERS
from .trace import capture

__all__ = ["capture", "HANDLERS"]
