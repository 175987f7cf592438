"""Models as Hugging Face loads them: dict batches of keyword inputs, integer token ids through
embedding tables, padding masks in the integer softmax, masked mean pooling, sums/means over any
dim (issue 16, part 1).

Two kinds of model: a small hand-built encoder with the same structure as HF's eager BERT (token,
position and token-type embeddings, an additive ``(1 - mask) * finfo.min`` attention bias, masked
mean pooling), which needs nothing beyond torch; and real ``transformers`` BERT models with tiny
random configs (sdpa and eager attention), skipped when ``transformers`` is not installed. Why both:
the hand-built one pins our semantics; HF builds its mask with dozens of ops that change between
releases, and only the real thing shows that capture follows them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import edgequant as eq
from edgequant.errors import ArtifactError, CalibrationError, InputError, UnsupportedOpError

V, L, D, H = 40, 8, 16, 2


class TinyEncoder(torch.nn.Module):
    """Embeddings (token + position + token type) -> LayerNorm -> masked self-attention -> residual
    -> LayerNorm -> masked mean pooling; HF eager BERT's mask arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok = torch.nn.Embedding(V, D)
        self.pos = torch.nn.Embedding(L, D)
        self.typ = torch.nn.Embedding(2, D)
        self.register_buffer("position_ids", torch.arange(L)[None])
        self.ln0 = torch.nn.LayerNorm(D)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(D, D) for _ in range(4))
        self.ln1 = torch.nn.LayerNorm(D)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[0]
        x = self.tok(input_ids) + self.pos(self.position_ids[:, :L]) + self.typ(torch.zeros_like(self.position_ids))
        x = self.ln0(x)
        split = lambda t: t.view(n, L, H, D // H).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        p = torch.softmax(q @ k.transpose(-1, -2) / (D // H) ** 0.5 + bias, dim=-1)
        a = (p @ v).transpose(1, 2).reshape(n, L, D)
        t = self.ln1(x + self.o(a))
        m = attention_mask.unsqueeze(-1).expand(t.size()).float()
        return torch.sum(t * m, 1) / torch.clamp(m.sum(1), min=1e-9)


def batch(n: int, seed: int = 0, vocab: int = V, length: int = L) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    lens = torch.randint(2, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lens[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def lsb(q, b) -> int:
    a = np.asarray(q.run(b, return_int=True), np.int64)
    s = np.asarray(q.simulate(b, return_int=True), np.float64).astype(np.int64)
    return int(np.abs(a - s).max())


def cosine(a, b) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(torch.as_tensor(a).double(), torch.as_tensor(b).double(), dim=1)


@pytest.fixture(scope="module")
def tiny():
    model = TinyEncoder().eval()
    calib = [batch(16, seed=s) for s in range(3)]
    return model, calib, eq.quantize(model, "w8a8-pc", calib)


def test_dict_batch_runs_as_integer_program_matching_simulation(tiny):
    model, calib, q = tiny
    b = batch(24, seed=99)
    assert q.program.inputs == ["input_ids", "attention_mask"]
    assert q.program.tensors["input_ids"].dtype == "int64"
    ops = {i.op for i in q.program.instrs}
    assert {"embedding", "softmax_masked", "reduce"} <= ops
    assert lsb(q, b) <= 1
    with torch.no_grad():
        ref = model(**b)
    assert float(cosine(q.run(b), ref).min()) > 0.99


def test_padding_does_not_change_the_integer_output(tiny):
    """Tokens under the padding mask are invisible: masked keys get probability exactly 0 and the
    masked mean leaves them out, so changing them changes nothing, bit for bit."""
    _, _, q = tiny
    b = batch(12, seed=5)
    other = {k: v.clone() for k, v in b.items()}
    other["input_ids"][b["attention_mask"] == 0] = V - 1
    assert (other["input_ids"] != b["input_ids"]).any()
    np.testing.assert_array_equal(np.asarray(q.run(b, return_int=True)), np.asarray(q.run(other, return_int=True)))


def test_fp32_recipe_reproduces_the_model(tiny):
    model, calib, _ = tiny
    q = eq.quantize(model, "fp32", calib)
    b = batch(8, seed=3)
    with torch.no_grad():
        ref = model(**b)
    np.testing.assert_allclose(np.asarray(q.run(b)), ref.numpy(), atol=1e-5)


def test_numpy_dict_and_chunking(tiny):
    _, _, q = tiny
    b = batch(10, seed=7)
    whole = np.asarray(q.run({k: v.numpy() for k, v in b.items()}, return_int=True))
    chunked = np.asarray(q.run(b, return_int=True, chunk=3))
    np.testing.assert_array_equal(whole, chunked)
    assert isinstance(q.run(b), torch.Tensor) and isinstance(q.run({k: v.numpy() for k, v in b.items()}), np.ndarray)


def test_masked_softmax_kernel_gives_masked_keys_zero():
    from edgequant.kernels.masked import softmax_masked_run
    from edgequant.kernels.context import KernelContext
    from edgequant.kernels.transformer import ort_softmax_table, softmax_exp_table
    from edgequant.lower.transformer import softmax_qparams
    from edgequant.program import Instr, TensorInfo
    from edgequant.qmath import QParams

    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (3, 2, 5, 6)).astype(np.int8)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    qx = QParams(np.float32(0.05), np.int32(3), 8, True, False)
    qy = softmax_qparams(8)
    ins = Instr("softmax_masked", ["x", "m"], "y", {"axis": -1, "out_levels": 256, "mask_view": (1, 1, 6)},
                {"exp_table": softmax_exp_table(0.05, 256), "table_ort": ort_softmax_table(0.05, 6)})
    tensors = {"x": TensorInfo("int8", x.shape, qx), "y": TensorInfo("int8", x.shape, qy)}
    keep = np.broadcast_to(mask[:, None, None, :] != 0, x.shape)
    real = torch.softmax(torch.tensor((x.astype(np.float64) - 3) * 0.05).masked_fill(~torch.tensor(keep), -np.inf), -1)
    for rounding in ("gemmlowp", "onnxruntime"):
        y = softmax_masked_run(ins, [x, mask], KernelContext(rounding, tensors))
        assert (y[~keep] == qy.qmin).all()  # probability 0 exactly
        got = (y.astype(np.float64) - int(qy.zero_point)) * float(qy.scale)
        assert np.abs(got - real.numpy()).max() <= 1.0 / 256 + 1e-9  # within 1 LSB of the exact softmax
    assert (softmax_masked_run(ins, [x, mask], KernelContext("gemmlowp", tensors))[2, :, :, 0] == 127).all()


def test_reductions_over_any_dim_single_tensor_model():
    class Pool(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(12, 6)

        def forward(self, x):  # (N, T, 12) -> mean over tokens, sum over features
            h = self.fc(x)
            return torch.cat([h.mean(dim=1), h.sum(dim=-1)], dim=1)

    torch.manual_seed(1)
    model = Pool().eval()
    x = torch.randn(32, 5, 12)
    q = eq.quantize(model, "w8a8-pc", x)
    assert sum(i.op == "reduce" for i in q.program.instrs) == 2
    assert lsb(q, x[:16]) <= 1
    with torch.no_grad():
        ref = model(x[:16])
    assert float(cosine(q.run(x[:16]), ref).min()) > 0.99


def test_clear_errors_for_bad_batches(tiny):
    _, _, q = tiny
    b = batch(4, seed=1)
    with pytest.raises(InputError, match="missing.*attention_mask"):
        q.run({"input_ids": b["input_ids"]})
    with pytest.raises(InputError, match="max_length=8"):
        q.run(batch(4, length=6))
    with pytest.raises(InputError, match="keyword inputs"):
        q.run(b["input_ids"].float())
    bad = dict(b, input_ids=b["input_ids"] + 1000)
    with pytest.raises(InputError, match="embedding table"):
        q.run(bad)


@pytest.mark.parametrize("recipe", ["w8a8-pc", "w8a16"])
def test_keyword_input_programs_save_and_load_bit_identically(recipe, tmp_path):
    """Artifact format 3: token ids, masks and float features as keyword inputs; the golden check
    runs on seeded ids within the tables and padding masks; a tampered golden mask is caught."""
    import json

    from edgequant import artifact

    model = TinyEncoder().eval()
    q = eq.quantize(model, recipe, [batch(8, s) for s in range(3)])
    q.save(tmp_path / "enc")
    q2 = eq.load(tmp_path / "enc")
    assert q2.program.inputs == ["input_ids", "attention_mask"]
    ev = batch(16, seed=7)
    for rounding in ("gemmlowp", "onnxruntime"):
        assert np.array_equal(q.run(ev, rounding=rounding, return_int=True), q2.run(ev, rounding=rounding, return_int=True))
    # the CLI runs it on an .npz holding one array per input name
    from edgequant import cli

    np.savez(tmp_path / "ev.npz", **{k: v.numpy() for k, v in ev.items()})
    assert cli.main(["run", str(tmp_path / "enc"), "--input", str(tmp_path / "ev.npz"), "--output",
                     str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), q.run(ev).numpy())
    man = artifact.read_manifest(tmp_path / "enc")
    assert [i["name"] for i in man["model"]["inputs"]] == ["input_ids", "attention_mask"]
    assert {i["dtype"] for i in man["model"]["inputs"]} == {"int64"}
    files = artifact.artifact_files(q)
    tensors = artifact.read_safetensors(files[artifact.TENSORS], artifact.TENSORS, None)
    ids, mask = tensors["golden.input.input_ids"], tensors["golden.input.attention_mask"]
    assert ids.dtype == np.int64 and 0 <= ids.min() and ids.max() < V
    assert set(np.unique(mask)) <= {0, 1} and mask[:, 0].all()
    # a golden mask edited consistently (checksums resealed) computes differently: refused by name
    tensors["golden.input.attention_mask"] = np.zeros_like(mask) + mask[:, :1]
    files[artifact.TENSORS] = artifact.safetensors_bytes(tensors)
    m = json.loads(files[artifact.MANIFEST])
    m["files"][artifact.TENSORS] = {"sha256": artifact.files._sha256(files[artifact.TENSORS]),
                                    "bytes": len(files[artifact.TENSORS])}
    m.pop("manifest_sha256")
    m["manifest_sha256"] = artifact.files._sha256(artifact.files._json_bytes(m))
    files[artifact.MANIFEST] = artifact.files._json_bytes(m)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, data in files.items():
        (bad / name).write_bytes(data)
    with pytest.raises(ArtifactError, match="golden input"):
        eq.load(bad)


def test_calibration_batches_must_match(tiny):
    model, _, _ = tiny
    with pytest.raises(CalibrationError, match="attention_mask"):
        eq.quantize(model, "w8a8-pc", [batch(4), {"input_ids": batch(4)["input_ids"]}])


def test_unsupported_uses_are_refused_by_name_and_the_model_is_untouched():
    class IdsArithmetic(TinyEncoder):
        def forward(self, input_ids, attention_mask):  # position ids from the token ids (RoBERTa-style)
            return super().forward(input_ids * (input_ids > 0).long(), attention_mask)

    class MaskAsFeature(TinyEncoder):
        def forward(self, input_ids, attention_mask):
            return super().forward(input_ids, attention_mask) + attention_mask.float().sum(1, keepdim=True).sqrt()

    for cls, pattern in ((IdsArithmetic, "token input 'input_ids'"), (MaskAsFeature, "padding mask 'attention_mask'")):
        model = cls().train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(UnsupportedOpError, match=pattern):
            eq.quantize(model, "w8a8-pc", [batch(8)])
        assert model.training
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- real transformers BERT ----------------------------------------------------------------------------
def tiny_hf_bert(attn: str = "sdpa"):
    """(model, batches(n, seed)): a 2-layer random ``transformers`` BERT, mean-pooled, three keyword
    inputs (ids, mask, token types); skips the test without ``transformers``."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16)
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    bert.set_attn_implementation(attn) if hasattr(bert, "set_attn_implementation") else None

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            t = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).expand(t.size()).float()
            return torch.sum(t * m, 1) / torch.clamp(m.sum(1), min=1e-9)

    def b3(n, seed):
        b = batch(n, seed)
        return {**b, "token_type_ids": (torch.arange(L)[None] >= 4).long().expand(n, L) * b["attention_mask"]}

    return Pooled().eval(), b3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_hf_bert_as_loaded(attn):
    model, b3 = tiny_hf_bert(attn)
    calib = [b3(16, s) for s in range(3)]
    ev = b3(24, 42)
    with torch.no_grad():
        ref = model(**ev)
    fp = eq.quantize(model, "fp32", calib)
    np.testing.assert_allclose(np.asarray(fp.run(ev)), ref.numpy(), atol=1e-4)
    q = eq.quantize(model, "w8a8-pc", calib)
    assert sum(i.op == "embedding" for i in q.program.instrs) == 2  # word and token type; position folded
    assert sum(i.op == "softmax_masked" for i in q.program.instrs) == 2
    assert lsb(q, ev) <= 1
    assert float(cosine(q.run(ev), ref).mean()) > 0.99


@pytest.mark.parametrize("recipe", sorted(eq.RECIPES))
def test_every_recipe_runs_or_refuses_a_keyword_input_encoder(recipe, tiny):
    """Dict batches reach every post-training path (binary recalibration crashed on them once):
    each registered recipe quantizes and runs the encoder, or refuses with a clear EdgequantError."""
    model, calib = tiny[0], [batch(16, seed=s) for s in range(2)]
    try:
        q = eq.quantize(model, recipe, calib)
    except eq.EdgequantError as e:
        assert "reconstruction does not support" in str(e), e  # block/layer reconstruction: conv nets only
        return
    y = np.asarray(q.run(batch(4, seed=9)))
    assert y.shape == (4, model(**batch(4, seed=9)).shape[1]) and np.all(np.isfinite(y))


def test_onnxruntime_backend_and_sweep_engine_take_keyword_batches(tiny):
    """``q.run(batch, backend="onnxruntime")`` and the sweep's engine choice feed each keyword input
    by name (they took one float array only, so a transformer's sweep fell back to the interpreter)."""
    pytest.importorskip("onnxruntime")
    from edgequant.feeds import KeywordBatch
    from edgequant.sweep import engines

    model, calib = tiny[0], tiny[1]
    q = eq.quantize(model, "w8a16", calib)
    ev = batch(8, seed=5)
    want = np.asarray(q.run(ev, rounding="onnxruntime"))
    np.testing.assert_array_equal(np.asarray(q.run(ev, backend="onnxruntime")), want)
    x = KeywordBatch({k: v.numpy() for k, v in ev.items()})
    eng = engines.select(q, x, ["onnxruntime"], 1, "gemmlowp")
    assert eng.name == "onnxruntime" or "not faster" in eng.rejected.get("onnxruntime", ""), eng.rejected
    np.testing.assert_array_equal(np.asarray(engines.timing.fast_runner(q, "onnxruntime", 1)(x)), want)
