"""Which real-world architectures edgequant takes today: capture, w8a8-pc integer program, ONNX and
TFLite export, on block-faithful re-implementations of well-known torchvision/HF families.

Each net below copies the *structure* of its family (the ops and the way they are wired: torchvision's
Bottleneck, InvertedResidual with SE, DenseLayer, Fire, ShuffleNetV2 unit with chunk and channel
shuffle, Inception block, ConvNeXt block with permute + LayerNorm + layer scale, ViT encoder with
class token and nn.MultiheadAttention, BERT post-LN layer, U-Net-style decoder with upsampling) at a
small width and a 64x64 input, random weights and randomized BN statistics, so the whole zoo runs
in about a minute. It answers "will my model go through?" -- not accuracy: that needs trained
weights (see bench/ptq_lowbit.py and friends for accuracy on real data).

Columns: ``capture`` ok or the first line of the error (an op edgequant does not support yet is
named); ``SQNR dB`` of the integer program's output (``q.run``) against the fp32 model on 16
N(0, 1) inputs (w8a8-pc, calibrated on 32 others); ``run~sim`` argmax agreement of ``q.run`` with
``q.simulate``; ``onnx``/``tflite``: the export and, for ONNX, ORT parity with the interpreter's
"onnxruntime" mode (max integer difference).

    python bench/zoo.py                # every net
    python bench/zoo.py --nets vit convnext
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant.models import randomize_bn


def cbr(cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1, act=nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class Bottleneck(nn.Module):  # torchvision ResNet-50
    def __init__(self, cin: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        cout = mid * 4
        self.conv1, self.conv2, self.conv3 = cbr(cin, mid, 1), cbr(mid, mid, 3, stride), cbr(mid, cout, 1, act=None)
        self.down = cbr(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.down(x))


class ResNet50ish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 16, 7, 2), nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(Bottleneck(16, 8), Bottleneck(32, 16, 2), Bottleneck(64, 16))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class SE(nn.Module):  # torchvision SqueezeExcitation
    def __init__(self, c: int, squeeze: int, act=nn.ReLU, gate=nn.Hardsigmoid) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act, self.gate = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1), act(), gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class MBConv(nn.Module):  # MobileNetV3 / EfficientNet inverted residual with SE
    def __init__(self, cin: int, exp: int, cout: int, k: int, s: int, act, gate) -> None:
        super().__init__()
        self.block = nn.Sequential(cbr(cin, exp, 1, act=act), cbr(exp, exp, k, s, exp, act=act),
                                   SE(exp, max(8, exp // 4), nn.ReLU if gate is nn.Hardsigmoid else nn.SiLU, gate),
                                   cbr(exp, cout, 1, act=None))
        self.res = s == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.res else y  # (EfficientNet's StochasticDepth is the identity in eval)


class MobileNetV3ish(nn.Module):
    def __init__(self, act=nn.Hardswish, gate=nn.Hardsigmoid) -> None:
        super().__init__()
        self.features = nn.Sequential(cbr(3, 16, 3, 2, act=act), MBConv(16, 64, 24, 3, 2, act, gate),
                                      MBConv(24, 72, 24, 5, 1, act, gate), cbr(24, 96, 1, act=act))
        self.classifier = nn.Sequential(nn.Linear(96, 64), act(), nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class DenseNetish(nn.Module):  # torchvision DenseNet: BN-ReLU-conv *pre-activation* on concatenations
    def __init__(self, growth: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.layers = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(16 + i * growth), nn.ReLU(),
                                                  nn.Conv2d(16 + i * growth, 4 * growth, 1, bias=False),
                                                  nn.BatchNorm2d(4 * growth), nn.ReLU(),
                                                  nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)) for i in range(3))
        c = 16 + 3 * growth
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2))
        self.norm, self.fc = nn.BatchNorm2d(c // 2), nn.Linear(c // 2, 10)

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        y = F.relu(self.norm(self.transition(torch.cat(feats, 1))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class Fire(nn.Module):  # torchvision SqueezeNet
    def __init__(self, cin: int, sq: int, e: int) -> None:
        super().__init__()
        self.squeeze, self.e1, self.e3 = nn.Conv2d(cin, sq, 1), nn.Conv2d(sq, e, 1), nn.Conv2d(sq, e, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)


class SqueezeNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      Fire(32, 8, 16), Fire(32, 8, 16), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 16, 32))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(64, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:  # torchvision's, verbatim
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):  # torchvision ShuffleNetV2 InvertedResidual, stride 1
    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.branch2 = nn.Sequential(cbr(h, h, 1), cbr(h, h, 3, 1, h, act=None), cbr(h, h, 1))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch2(x2)), dim=1), 2)


class ShuffleNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1))
        self.stage = nn.Sequential(ShuffleUnit(24), ShuffleUnit(24))
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(self.stage(self.stem(x)).mean([2, 3]))  # torchvision: x.mean([2, 3])


class Inception(nn.Module):  # torchvision GoogLeNet Inception block
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int) -> None:
        super().__init__()
        self.b1 = cbr(cin, c1, 1)
        self.b2 = nn.Sequential(cbr(cin, c3r, 1), cbr(c3r, c3, 3))
        self.b3 = nn.Sequential(cbr(cin, c5r, 1), cbr(c5r, c5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), cbr(cin, pp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 16, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.inc = Inception(16, 8, 8, 16, 4, 8, 8)
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        # torchvision's transform_input=True: per-channel affine on slices of the input, then cat
        x0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        x = torch.cat((x0, x1, x2), 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.inc(self.stem(x)), 1), 1))


class LayerNorm2d(nn.LayerNorm):  # torchvision ConvNeXt's
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):  # torchvision ConvNeXt block
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.layer_scale = nn.Parameter(torch.full((c, 1, 1), 0.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.layer_scale * y


class ConvNeXtish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 4, 4), LayerNorm2d(32, eps=1e-6))
        self.blocks = nn.Sequential(CNBlock(32), CNBlock(32))
        self.head_norm, self.fc = LayerNorm2d(32, eps=1e-6), nn.Linear(32, 10)

    def forward(self, x):
        y = self.head_norm(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1))
        return self.fc(torch.flatten(y, 1))


class EncoderBlock(nn.Module):  # torchvision ViT EncoderBlock (pre-LN, nn.MultiheadAttention)
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class ViTish(nn.Module):
    def __init__(self, d: int = 32, patch: int = 16) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, d, patch, patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, (64 // patch) ** 2 + 1, d) * 0.02)
        self.layers = nn.Sequential(EncoderBlock(d, 4), EncoderBlock(d, 4))
        self.ln, self.head = nn.LayerNorm(d, eps=1e-6), nn.Linear(d, 10)

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.conv_proj.out_channels, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


class BertLayerish(nn.Module):  # HF BertLayer (post-LN), hand-written attention, on (N, T, d) input
    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h, self.q, self.k, self.v, self.o = heads, nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-12), nn.LayerNorm(d, eps=1e-12)
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def split(self, t):
        n, s, d = t.shape
        return t.view(n, s, self.h, d // self.h).permute(0, 2, 1, 3)

    def forward(self, x):
        n, s, d = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.h), dim=-1) @ v
        x = self.ln1(x + self.o(a.permute(0, 2, 1, 3).reshape(n, s, d)))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class UNetish(nn.Module):  # segmentation decoder: upsample + skip concatenation
    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2 = cbr(3, 16), cbr(16, 32, 3, 2)
        self.dec = cbr(48, 16)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        up = F.interpolate(self.enc2(e1), scale_factor=2, mode="nearest")
        return self.head(self.dec(torch.cat([up, e1], 1)))


NETS = {
    "resnet50": (ResNet50ish, (3, 64, 64)),
    "mobilenet_v3": (MobileNetV3ish, (3, 64, 64)),
    "efficientnet": (lambda: MobileNetV3ish(nn.SiLU, nn.Sigmoid), (3, 64, 64)),
    "densenet": (DenseNetish, (3, 64, 64)),
    "squeezenet": (SqueezeNetish, (3, 64, 64)),
    "shufflenet_v2": (ShuffleNetish, (3, 64, 64)),
    "googlenet": (GoogLeNetish, (3, 64, 64)),
    "convnext": (ConvNeXtish, (3, 64, 64)),
    "vit": (ViTish, (3, 64, 64)),
    "bert_layer": (BertLayerish, (16, 32)),
    "unet": (UNetish, (3, 64, 64)),
}


def sqnr_db(ref: np.ndarray, y: np.ndarray) -> float:
    noise = float(np.sum((ref - y) ** 2))
    return float("inf") if noise == 0 else 10 * math.log10(float(np.sum(ref ** 2)) / noise)


def first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"


def try_net(name: str) -> dict:
    make, shape = NETS[name]
    torch.manual_seed(0)
    model = randomize_bn(make().eval())
    gen = torch.Generator().manual_seed(1)
    calib, x = torch.randn(32, *shape, generator=gen), torch.randn(16, *shape, generator=gen)
    row = {"net": name, "capture": "ok"}
    t = time.perf_counter()
    try:
        q = eq.quantize(model, "w8a8-pc", calib)
    except eq.EdgequantError as e:
        row["capture"] = first_line(e)
        return row
    row["quantize_s"] = time.perf_counter() - t
    with torch.no_grad():
        ref = model(x).flatten(1).numpy()
    y = np.asarray(q.run(x)).reshape(len(x), -1)
    row["sqnr"] = sqnr_db(ref, y)
    row["run~sim"] = 100 * float(np.mean(y.argmax(1) == np.asarray(q.simulate(x)).reshape(len(x), -1).argmax(1)))
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("onnx", "tflite"):
            try:
                q.export(Path(d) / f"m.{fmt}", format=fmt)
                row[fmt] = "ok"
            except eq.EdgequantError as e:
                row[fmt] = first_line(e)[:70]
    if row["onnx"] == "ok":
        try:
            got = np.asarray(q.run(x, backend="onnxruntime")).reshape(len(x), -1)
            want = np.asarray(q.run(x, rounding="onnxruntime")).reshape(len(x), -1)
            qp = q.program.output_qparams
            lsb = float(qp.scale) if qp is not None else 1.0
            row["onnx"] = f"ok, max {np.abs(got - want).max() / lsb:.0f} LSB vs interpreter"
        except Exception as e:  # report, do not stop the zoo
            row["onnx"] = first_line(e)[:70]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.nets:
        rows.append(try_net(name))
        r = rows[-1]
        print(f"{name:<14} capture: {r['capture'][:110]}", flush=True)
    print(f"\n{'net':<14}{'SQNR dB':>8}{'run~sim':>8}  {'onnx':<42}tflite")
    for r in rows:
        if r["capture"] != "ok":
            print(f"{r['net']:<14}{'-':>8}{'-':>8}  not captured: {r['capture'][:100]}")
            continue
        print(f"{r['net']:<14}{r['sqnr']:>8.1f}{r['run~sim']:>7.0f}%  {r['onnx']:<42}{r['tflite'][:60]}")
    print(f"\n{sum(r['capture'] == 'ok' for r in rows)}/{len(rows)} nets go through capture + w8a8-pc")


if __name__ == "__main__":
    main()
