"""Slicing (chunk/split/unbind/select/slice/narrow), upsampling (nearest, bilinear) and constant
tensors (layer scale, position embedding, class token): capture, integer program, simulate,
artifact, ONNX Runtime and LiteRT parity, and clear errors for what is not supported."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant import interpreter
from edgequant.errors import UnsupportedOpError

ort = pytest.importorskip("onnxruntime")


def _sqnr(ref: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - y) ** 2), 1e-30)))


def _trace(q, x) -> dict[str, np.ndarray]:
    env: dict[str, np.ndarray] = {}
    interpreter.run(q.program, np.asarray(x, np.float32), trace=lambda ins, v: env.__setitem__(ins.output, v))
    return env


def _ort(q, x, **options) -> np.ndarray:
    from edgequant.export.onnx import to_onnx

    s = ort.InferenceSession(to_onnx(q, **options).SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: np.asarray(x, np.float32)})[0]


def _assert_tflite_bit_exact(q, x) -> None:
    """The .tflite file on LiteRT's reference kernels gives the interpreter's integers exactly."""
    from edgequant.export.tflite import to_tflite
    from edgequant.export.tflite.run import run_tflite

    assert np.array_equal(run_tflite(to_tflite(q), x.numpy()), np.asarray(q.run(x)))


class Slices(nn.Module):
    """Every slicing form, on the float input (GoogLeNet's transform_input) and on activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(14, 6, 1)

    def forward(self, x):
        x = torch.cat([x[:, 2:3], x[:, :2]], 1)  # slices of the (quantized) input
        y = F.relu(self.conv(x))
        a, b = y.chunk(2, dim=1)  # 4 + 4
        c, d, _ = torch.split(y, [2, 3, 3], dim=1)
        e = y.unbind(1)[5].unsqueeze(1)  # unbind + getitem, one used
        f = y[:, 1::3]  # step 3: channels 1, 4, 7
        g = y.narrow(1, 6, 2)[:, :, :, 1:]  # narrow + slice along W
        g = F.pad(g, (1, 0))
        h = y[:, 3].unsqueeze(1)  # select
        return self.head(torch.cat([a, b, c, d[:, :1], e, f[:, :1], g[:, :1], h], 1) [:, :14])


class MoreSplits(nn.Module):
    def forward(self, x):
        a, b, c = torch.tensor_split(x, 3, dim=1)  # 2, 2, 1 channels
        d, e = torch.tensor_split(x, [1], dim=2)
        up = F.interpolate(x, scale_factor=2, mode="nearest-exact")[:, :, 1::2, ::2]
        return (torch.cat([c, b, a], 1) + up + torch.cat([e, d], 2)).unflatten(2, (2, 2)).flatten(2, 3)


def test_tensor_split_and_nearest_exact_match_torch():
    torch.manual_seed(0)
    model = MoreSplits().eval()
    q, x = _quantize(model, (5, 4, 6), "fp32")
    np.testing.assert_allclose(np.asarray(q.run(x)), model(x).numpy(), atol=1e-6)


class Upsample(nn.Module):
    def __init__(self, mode: str = "nearest", size=None, align_corners: bool | None = None) -> None:
        super().__init__()
        self.enc, self.dec = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 4, 3, padding=1)
        self.mode, self.size, self.ac = mode, size, align_corners

    def forward(self, x):
        e = F.relu(self.enc(x))
        if self.size is None:
            up = F.interpolate(e, scale_factor=2, mode=self.mode, align_corners=self.ac)
        else:
            up = F.interpolate(e, size=self.size, mode=self.mode, align_corners=self.ac)
        return self.dec(up)


GAMMA = [1.0, 0.1, 0.01, 0.001]


class LayerScale(nn.Module):
    """``gamma * conv(x) + beta`` with gamma (C, 1, 1) spanning three decades (the conv's channels
    scaled by 1/gamma, so every output channel has a similar range), then ``delta * (.)`` after a
    residual add, where there is no conv to fold into."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.div_(torch.tensor(GAMMA).reshape(4, 1, 1, 1))
            self.conv.bias.div_(torch.tensor(GAMMA))
        self.gamma = nn.Parameter(torch.tensor(GAMMA).reshape(4, 1, 1))
        self.beta = nn.Parameter(torch.tensor([0.5, -0.5, 0.0, 0.25]).reshape(4, 1, 1))
        self.delta = nn.Parameter(torch.tensor([2.0, -1.0, 0.5, 0.25]).reshape(4, 1, 1))

    def forward(self, x):
        y = self.conv(x) * self.gamma + self.beta
        return (F.relu(y) + y) * self.delta


class TokenLayerScale(nn.Module):
    """CaiT's ``x + gamma * fc(x)`` on tokens: gamma per feature folds into the linear."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        self.gamma = nn.Parameter(torch.logspace(0, -3, d))
        with torch.no_grad():
            self.fc2.weight.div_(self.gamma[:, None])
            self.fc2.bias.div_(self.gamma)

    def forward(self, x):
        h = self.fc1(x)
        return h + (self.gamma * self.fc2(h) + 0.5 * self.gamma)


class Tokens(nn.Module):
    """ViT's patch tokens + class token (expand + cat) + position embedding + ``x[:, 0]``."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, d, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.5)
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        n = x.shape[0]
        t = self.proj(x).reshape(n, self.proj.out_channels, -1).transpose(1, 2)  # (N, 4, d)
        t = torch.cat([self.cls.expand(n, -1, -1), t], dim=1) + self.pos
        return self.fc(F.relu(t)[:, 0]) + self.fc(t[:, 2])  # the class token and one patch token


def _quantize(model, shape, recipe="w8a8-pc", n=64, seed=0):
    torch.manual_seed(seed)
    model = model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    calib, x = torch.randn(n, *shape, generator=g), torch.randn(16, *shape, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = eq.quantize(model, recipe, calib)
    return q, x


@pytest.fixture(scope="module")
def slices():
    torch.manual_seed(0)
    model = Slices().eval()
    return (*_quantize(model, (3, 8, 8)), model)


def test_slices_move_the_input_integers_exactly(slices):
    q, x, _ = slices
    ops = {i.op for i in q.program.instrs}
    assert "slice" in ops
    env = _trace(q, x)
    n_slices = 0
    for ins in q.program.instrs:
        if ins.op != "slice":
            continue
        a = ins.attrs
        idx = [slice(None)] * env[ins.inputs[0]].ndim
        idx[a["axis"]] = slice(a["start"], a["stop"], a["step"])
        np.testing.assert_array_equal(env[ins.output], env[ins.inputs[0]][tuple(idx)])
        assert q.program.tensors[ins.output].qparams is q.program.tensors[ins.inputs[0]].qparams
        n_slices += 1
    # input x2, chunk x2, split x2 (the third is unused and not computed), unbind (one of 8 used), step,
    # narrow, W slice, select, the final [:, :14] and the d/f/g [:, :1]
    assert n_slices == 15


def test_slices_program_matches_fp32_simulate_and_onnx(slices):
    q, x, model = slices
    with torch.no_grad():
        ref = model(x).numpy()
    y = np.asarray(q.run(x))
    assert _sqnr(ref, y) > 30.0
    yi, si = np.asarray(q.run(x, return_int=True)), np.asarray(q.simulate(x, return_int=True))
    assert np.abs(yi.astype(int) - si.astype(int)).max() <= 1
    want = np.asarray(q.run(x, rounding="onnxruntime"))
    for style in ("qdq", "qoperator"):
        assert np.abs(_ort(q, x, style=style) - want).max() == 0.0, style


def test_slices_tflite_bit_exact_and_artifact_round_trip(slices, tmp_path):
    from edgequant.export.tflite import to_tflite
    from edgequant.export.tflite.run import run_tflite

    q, x, _ = slices
    y = np.asarray(q.run(x))
    assert np.array_equal(run_tflite(to_tflite(q), x.numpy()), y)
    q.save(tmp_path / "m")
    back = eq.load(tmp_path / "m")
    assert np.array_equal(np.asarray(back.run(x)), y)
    assert np.array_equal(np.asarray(back.run(x, rounding="onnxruntime")), np.asarray(q.run(x, rounding="onnxruntime")))


def _edit_instr(op: str, fn):
    def edit(doc):
        fn(next(i for i in doc["instrs"] if i["op"] == op)["attrs"])
    return edit


@pytest.mark.parametrize("op, fn, match", [
    ("slice", lambda a: a.update(stop=99), r"slice .* does not fit the input shape"),
    ("slice", lambda a: a.update(axis=0), r"slice .* does not fit the input shape"),
    ("slice", lambda a: a.update(start=0), r"not the slice's"),
])
def test_artifact_rejects_edited_slices(slices, tmp_path, op, fn, match):
    from edgequant.errors import ArtifactError
    from test_artifact import edit_program

    q, _, _ = slices
    q.save(tmp_path / "m")
    edit_program(tmp_path / "m", _edit_instr(op, fn))
    with pytest.raises(ArtifactError, match=match):
        eq.load(tmp_path / "m")


@pytest.mark.parametrize("mode, size, ac", [("nearest", None, None), ("bilinear", None, False), ("bilinear", None, True),
                                             ("bilinear", (7, 11), False), ("bilinear", (7, 11), True)])
def test_upsample(mode, size, ac):
    from edgequant.export.tflite import to_tflite
    from edgequant.export.tflite.run import run_tflite

    torch.manual_seed(0)
    model = Upsample(mode, size, ac).eval()
    q, x = _quantize(model, (3, 8, 10))
    env = _trace(q, x)
    up = next(i for i in q.program.instrs if i.op == "upsample")
    src, out = env[up.inputs[0]], env[up.output]
    qp = q.program.tensors[up.inputs[0]].qparams
    assert q.program.tensors[up.output].qparams is qp  # same grid in and out
    if mode == "nearest":  # data movement: each integer repeated 2x2
        np.testing.assert_array_equal(out, src.repeat(2, axis=2).repeat(2, axis=3))
    else:  # TFLite's integer bilinear vs float bilinear of the same integers: 10-bit source positions
        real = torch.from_numpy((src.astype(np.float64) - int(qp.zero_point)))
        flt = F.interpolate(real, size=out.shape[2:], mode="bilinear", align_corners=ac).numpy()
        exact_positions = size is None and not ac  # factor 2, half-pixel: positions are multiples of 1/4
        assert np.abs((out.astype(np.float64) - int(qp.zero_point)) - flt).max() <= (0.5 if exact_positions else 1.5)
    y = np.asarray(q.run(x))
    assert np.abs(np.asarray(q.run(x, return_int=True)).astype(int)
                  - np.asarray(q.simulate(x, return_int=True)).astype(int)).max() <= 1
    assert np.array_equal(run_tflite(to_tflite(q), x.numpy()), y)  # LiteRT reference kernels
    want = np.asarray(q.run(x, rounding="onnxruntime"))
    for act in ("uint8", "int8"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.abs(_ort(q, x, activation_type=act) - want).max() == 0.0, act
    with torch.no_grad():
        assert _sqnr(model(x).numpy(), y) > 30.0


def test_layer_scale_folds_into_the_conv_and_keeps_each_channel_precise():
    """A per-channel constant right after a conv folds into its weights (one requantization, each
    channel its own multiplier); elsewhere it is a depthwise 1x1 conv. An 8-bit per-tensor constant
    would have rounded gamma = 0.001 to 0."""
    torch.manual_seed(0)
    model = LayerScale().eval()
    q, x = _quantize(model, (3, 6, 6))
    convs = [i for i in q.program.instrs if i.op == "conv"]
    assert len(convs) == 2 and convs[1].attrs["groups"] == 4  # folded conv, then delta as a depthwise conv
    assert not any(i.op in ("mul", "const") for i in q.program.instrs)
    with torch.no_grad():
        ref = model(x).numpy()
    y = np.asarray(q.run(x))
    for c in range(4):  # error relative to each channel's own range
        err = np.abs(y[:, c] - ref[:, c]).max() / np.abs(ref[:, c]).max()
        assert err < 0.06, (c, err)  # max error vs the channel range, at most 1/4 of the output range
    assert np.abs(_ort(q, x) - np.asarray(q.run(x, rounding="onnxruntime"))).max() == 0.0
    from edgequant.export.tflite import to_tflite
    from edgequant.export.tflite.run import run_tflite

    assert np.array_equal(run_tflite(to_tflite(q), x.numpy()), y)


def test_token_layer_scale_folds_into_the_linear():
    torch.manual_seed(0)
    model = TokenLayerScale().eval()
    q, x = _quantize(model, (5, 8))
    assert [i.op for i in q.program.instrs].count("linear") == 2
    assert not any(i.op in ("mul", "const") for i in q.program.instrs)  # x * gamma folded into fc2's rows
    with torch.no_grad():
        ref = model(x).numpy()
    assert _sqnr(ref, np.asarray(q.run(x))) > 30.0


def test_class_token_and_position_embedding(tmp_path):
    torch.manual_seed(0)
    model = Tokens().eval()
    q, x = _quantize(model, (3, 8, 8))
    consts = [i for i in q.program.instrs if i.op == "const"]
    assert len(consts) == 2 and all(i.arrays["value"].shape[0] == 1 for i in consts)
    with torch.no_grad():
        ref = model(x).numpy()
    y = np.asarray(q.run(x))
    assert _sqnr(ref, y) > 30.0
    for n in (1, 5):  # the constants broadcast over any batch
        np.testing.assert_array_equal(np.asarray(q.run(x[:n])), y[:n])
    assert np.abs(np.asarray(q.run(x, return_int=True)).astype(int)
                  - np.asarray(q.simulate(x, return_int=True)).astype(int)).max() <= 1
    want = np.asarray(q.run(x, rounding="onnxruntime"))
    for style in ("qdq", "qoperator"):
        assert np.abs(_ort(q, x, style=style) - want).max() == 0.0, style
    q.save(tmp_path / "m")
    assert np.array_equal(np.asarray(eq.load(tmp_path / "m").run(x)), y)


class _ConstCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.p = nn.Conv2d(3, 4, 1), nn.Parameter(torch.randn(1, 2, 4, 4))

    def forward(self, x):
        return torch.cat([self.p.expand(x.shape[0], -1, -1, -1), self.conv(x)], 1)


def test_constant_concatenation_broadcasts_over_the_batch_everywhere():
    """A class-token-like constant joins every sample: interpreter, ORT, and LiteRT (BROADCAST_TO to the
    runtime batch, so the .tflite keeps a dynamic batch)."""
    from edgequant.export.tflite import to_tflite
    from edgequant.export.tflite.run import run_tflite

    q, x = _quantize(_ConstCat(), (3, 4, 4))
    assert np.abs(_ort(q, x) - np.asarray(q.run(x, rounding="onnxruntime"))).max() == 0.0
    tfl = to_tflite(q)
    for n in (1, 5):
        assert np.array_equal(run_tflite(tfl, x[:n].numpy()), np.asarray(q.run(x[:n])))
    with pytest.raises(UnsupportedOpError, match=r"\[const\].*quantization-aware training"):
        eq.qat.prepare(_ConstCat(), "w4a4-qat", [torch.randn(8, 3, 4, 4)])


def test_fp32_recipe_runs_the_same_ops():
    torch.manual_seed(0)
    for model, shape in ((Slices(), (3, 8, 8)), (Tokens(), (3, 8, 8)), (Upsample("bilinear", (7, 11), True), (3, 8, 10))):
        model = model.eval()
        q, x = _quantize(model, shape, "fp32")
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(np.asarray(q.run(x)), ref, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(_ort(q, x), ref, atol=1e-4, rtol=1e-4)


class _BatchSlice(nn.Module):
    def forward(self, x):
        return x[1:]


class _OddNearest(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=1.5, mode="nearest")


class _ConstMinusX(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.ones(3, 1, 1))

    def forward(self, x):
        return self.c - x


class _ConstTooBig(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.ones(1, 3, 4, 4))

    def forward(self, x):
        return x + self.c  # x is (N, 3, 1, 4): the constant would enlarge it


@pytest.mark.parametrize("model, shape, match", [
    (_BatchSlice(), (3, 4, 4), r"node 'slice.*slices the batch dimension"),
    (_OddNearest(), (3, 4, 4), r"node 'upsample_nearest2d'.*whole factors"),
    (_ConstMinusX(), (3, 4, 4), r"node 'sub'.*constant tensor minus an activation"),
    (_ConstTooBig(), (3, 1, 4), r"node 'add'.*does not broadcast"),
])
def test_unsupported_variants_name_the_node(model, shape, match):
    with pytest.raises(UnsupportedOpError, match=match):
        eq.quantize(model, "w8a8-pc", [torch.rand(4, *shape)])


def test_qat_takes_slices_and_nearest_but_refuses_bilinear():
    calib = [torch.randn(8, 3, 8, 10)]
    qm = eq.qat.prepare(Upsample("nearest"), "w4a4-qat", calib)
    x = torch.randn(4, 3, 8, 10)
    q = eq.qat.convert(qm)
    assert torch.equal(q.run(x), qm.eval()(x).detach().float())
    with pytest.raises(UnsupportedOpError, match="bilinear upsampling"):
        eq.qat.prepare(Upsample("bilinear"), "w4a4-qat", calib)


class _Gate(nn.Module):
    """Squeeze-and-excitation without a lookup table: (N, C, 1, 1) * (N, C, H, W), then a same-shape product."""

    def __init__(self):
        super().__init__()
        self.c, self.f, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.c(x))
        t = y * F.relu6(self.f(F.adaptive_avg_pool2d(y, 1)))
        return self.fc(t.mean((2, 3)) * t.mean((2, 3)))


def test_tflite_mul_is_bit_exact():
    torch.manual_seed(0)
    q, x = _quantize(_Gate(), (3, 8, 8))
    assert [i.op for i in q.program.instrs].count("mul") == 2
    _assert_tflite_bit_exact(q, x)


class _Encoder(nn.Module):
    """nn.MultiheadAttention (self- and cross-attention, kdim != embed_dim) and nn.TransformerEncoderLayer."""

    def __init__(self, d: int = 16, batch_first: bool = True, masked: bool = False) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 4, batch_first=batch_first)
        self.cross = nn.MultiheadAttention(d, 2, kdim=8, vdim=8, batch_first=True)
        self.layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.masked = masked

    def forward(self, x):
        mask = torch.zeros(x.shape[1], x.shape[1], dtype=torch.bool) if self.masked else None
        y, _ = self.attn(x, x, x, need_weights=False, attn_mask=mask)
        z, _ = self.cross(y, x[:, :5, :8], x[:, :5, 8:])  # need_weights=True: weights computed, unused
        return self.layer(y + z)


def test_multihead_attention_is_captured_batch_first():
    from edgequant.capture import capture
    from edgequant.graph_exec import GraphModule

    torch.manual_seed(0)
    model = _Encoder().eval()
    x = torch.randn(6, 7, 16)
    g = capture(model, x[:2])
    assert {"matmul", "softmax", "transpose"} <= {n.op for n in g.nodes}
    with torch.no_grad():
        np.testing.assert_allclose(GraphModule(g)(x).numpy(), model(x).numpy(), atol=1e-5)
    assert isinstance(model.attn, nn.MultiheadAttention)  # the user's model is untouched
    q, xq = _quantize(model, (7, 16))
    with torch.no_grad():
        assert _sqnr(model(xq).numpy(), np.asarray(q.run(xq))) > 25.0
    for bad, match in ((_Encoder(batch_first=False), r"module 'attn'.*batch_first=False"),
                       (_Encoder(masked=True), r"module 'attn'.*attention mask")):
        with pytest.raises(eq.EdgequantError, match=match):
            capture(bad.eval(), x[:2])


class _ShuffleMix(nn.Module):
    """ShuffleNetV2's channel shuffle (5-D view/transpose/view) and ConvNeXt's permute -> Linear -> permute."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        y = self.fc(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.out(y)


def test_tflite_transpose_is_bit_exact():
    torch.manual_seed(0)
    q, x = _quantize(_ShuffleMix(), (3, 6, 6))
    assert [i.op for i in q.program.instrs].count("transpose") == 3
    _assert_tflite_bit_exact(q, x)


class _SdpaBlock(nn.Module):
    """HF-style attention: batch-first heads and F.scaled_dot_product_attention (default and explicit scale)."""

    def __init__(self, d: int = 16, h: int = 4) -> None:
        super().__init__()
        self.h, self.qkv, self.o = h, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = (y.view(n, t, self.h, d // self.h).transpose(1, 2) for y in self.qkv(x).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v) + F.scaled_dot_product_attention(q, k, v, scale=0.1)
        return self.o(a.transpose(1, 2).reshape(n, t, d))


def test_scaled_dot_product_attention_is_captured():
    from edgequant.capture import capture
    from edgequant.graph_exec import GraphModule

    torch.manual_seed(0)
    model = _SdpaBlock().eval()
    x = torch.randn(6, 7, 16)
    g = capture(model, x[:2])
    assert sorted(n.attrs["alpha"] for n in g.nodes if n.op == "matmul" and n.name.endswith(".scores")) == [0.1, 0.5]
    with torch.no_grad():
        np.testing.assert_allclose(GraphModule(g)(x).numpy(), model(x).numpy(), atol=1e-5)
    q, xq = _quantize(model, (7, 16))
    with torch.no_grad():
        assert _sqnr(model(xq).numpy(), np.asarray(q.run(xq))) > 25.0
    assert np.abs(_ort(q, xq) - np.asarray(q.run(xq, rounding="onnxruntime"))).max() == 0.0


def test_reconstruction_runs_through_slices_upsampling_and_constants():
    """BRECQ (a few steps) on a net with every shape op: the program still equals its simulation."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 8, 3, 2, 1)
            self.gamma, self.pos = nn.Parameter(torch.rand(8, 1, 1) + 0.5), nn.Parameter(torch.randn(1, 8, 8, 8) * 0.3)

        def forward(self, x):
            a, b = F.relu(self.c1(x)).chunk(2, 1)
            z = F.relu(self.c2(a + b)) * self.gamma
            return F.interpolate(z, scale_factor=2, mode="bilinear") + self.pos + F.interpolate(z, scale_factor=2)

    calib = torch.randn(32, 3, 8, 8)
    q = eq.reconstruct.quantize(Net().eval(), "w4a4-brecq", calib, iterations=5, progress=False, calib_samples=32)
    x = torch.randn(8, 3, 8, 8)
    assert {"slice", "upsample", "const"} <= {i.op for i in q.program.instrs}
    assert np.array_equal(np.asarray(q.run(x, return_int=True)), np.asarray(q.simulate(x, return_int=True)))


class _GateAdd(nn.Module):
    """(N,1,H,W) + (N,C,H,W): a spatial map added to every channel (attention maps, FPN-style sums)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 1, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c3(self.c2(x) + torch.relu(self.c1(x)))


def test_broadcasting_add_of_two_activations_runs_and_exports_exactly():
    from edgequant.export.tflite import to_tflite
    from edgequant.export.tflite.run import litert_available, run_tflite

    torch.manual_seed(0)
    model = _GateAdd().eval()
    g = torch.Generator().manual_seed(1)
    calib, x = torch.randn(32, 3, 8, 8, generator=g), torch.randn(16, 3, 8, 8, generator=g)
    q = eq.quantize(model, "w8a8-pc", calib)
    with torch.no_grad():
        ref = model(x).numpy()
    y = np.asarray(q.run(x))
    assert _sqnr(ref, y) > 30
    lsb = float(q.program.output_qparams.scale)
    assert np.abs(y - np.asarray(q.simulate(x))).max() <= 1.01 * lsb
    assert np.array_equal(_ort(q, x), np.asarray(q.run(x, rounding="onnxruntime")))
    if litert_available():
        assert np.array_equal(run_tflite(to_tflite(q), x.numpy()), y)

