"""Built-in models: the demo digits CNN (pretrained, shipped) and real topologies for coverage.

* ``digits_cnn`` -- small CNN for 8x8 digits; ``pretrained=True`` loads the shipped weights that
  ``scripts/train_digits.py`` reproduces.
* ``resnet`` -- ResNet with BasicBlocks (residual adds); ``resnet18()`` is the ImageNet shape,
  ``resnet_digits()`` a small one for 8x8 inputs.
* ``mobilenet_v2`` -- inverted residuals, depthwise convs, ReLU6; ``mobilenet_v2_digits()`` small.
* ``digits_lstm`` / ``digits_gru`` -- recurrent classifiers reading each 8x8 digit row by row (8 steps
  of 8 features); ``pretrained=True`` loads the shipped weights ``scripts/train_digits.py`` reproduces.
* ``sequence_rnn`` -- random-weight LSTM/GRU stacks of any size, for coverage and speed benches.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

WEIGHTS_DIR = Path(__file__).parent / "weights"


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(1, 16), _conv_bn(16, 32), nn.MaxPool2d(2),   # (N, 32, 4, 4)
            _conv_bn(32, 64), nn.MaxPool2d(2),                     # (N, 64, 2, 2)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _load(model: nn.Module, name: str) -> nn.Module:
    from safetensors.torch import load_file

    path = WEIGHTS_DIR / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"shipped weights {path} are missing; run scripts/train_digits.py to recreate them")
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def digits_cnn(pretrained: bool = True) -> DigitsCNN:
    m = DigitsCNN()
    return _load(m, "digits_cnn") if pretrained else m.eval()


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1, act=None)
        self.down = _conv_bn(cin, cout, 1, stride, act=None) if (stride != 1 or cin != cout) else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.down(x))


class ResNet(nn.Module):
    def __init__(self, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), in_ch: int = 3, num_classes: int = 1000,
                 imagenet_stem: bool = True) -> None:
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(_conv_bn(in_ch, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = _conv_bn(in_ch, widths[0], 3, 1)
        blocks, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet().eval()


def resnet_digits(pretrained: bool = False) -> ResNet:
    m = ResNet(layers=(1, 1, 1), widths=(16, 32, 64), in_ch=1, num_classes=10, imagenet_stem=False)
    return _load(m, "resnet_digits") if pretrained else m.eval()


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, act=nn.ReLU6)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), _conv_bn(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expand t, channels c, repeats n, stride s), as in the paper
    IMAGENET = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, config=IMAGENET, stem: int = 32, last: int = 1280, in_ch: int = 3, num_classes: int = 1000,
                 stem_stride: int = 2) -> None:
        super().__init__()
        layers, cin = [_conv_bn(in_ch, stem, 3, stem_stride, act=nn.ReLU6)], stem
        for t, c, n, s in config:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes).eval()


def mobilenet_v2_digits(pretrained: bool = False) -> MobileNetV2:
    cfg = ((1, 16, 1, 1), (4, 24, 2, 1), (4, 32, 2, 2), (4, 64, 2, 1))
    m = MobileNetV2(cfg, stem=16, last=128, in_ch=1, num_classes=10, stem_stride=1)
    return _load(m, "mobilenet_v2_digits") if pretrained else m.eval()


class DigitsRNN(nn.Module):
    """(N, 1, 8, 8) digits read as a sequence of 8 rows -> LSTM/GRU -> last step -> Linear."""

    def __init__(self, cell: str = "lstm", hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(8, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x.reshape(x.shape[0], 8, 8))  # (N, T=8, H)
        return self.fc(y[:, -1])


def digits_lstm(pretrained: bool = True) -> DigitsRNN:
    m = DigitsRNN("lstm")
    return _load(m, "digits_lstm") if pretrained else m.eval()


def digits_gru(pretrained: bool = True) -> DigitsRNN:
    m = DigitsRNN("gru")
    return _load(m, "digits_gru") if pretrained else m.eval()


class SequenceRNN(nn.Module):
    """(N, T, features) -> LSTM/GRU stack -> last step -> Linear: a random-weight recurrent classifier."""

    def __init__(self, cell: str = "lstm", features: int = 40, hidden: int = 256, layers: int = 1,
                 bidirectional: bool = False, num_classes: int = 12) -> None:
        super().__init__()
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(features, hidden, layers, batch_first=True,
                                                          bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


def sequence_rnn(cell: str = "lstm", seed: int = 0, **kw) -> SequenceRNN:
    torch.manual_seed(seed)
    return SequenceRNN(cell, **kw).eval()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so random-weight nets exercise BN folding."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model
