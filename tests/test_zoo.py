"""Well-known architectures (bench/zoo.py's block-faithful small re-implementations of ResNet-50,
MobileNetV3, EfficientNet, DenseNet, SqueezeNet, ShuffleNetV2, GoogLeNet, ConvNeXt, ViT, a BERT layer
and a U-Net decoder) go through capture, the w8a8-pc integer program and the ONNX export: a guard
against a change that quietly narrows what users' models can be."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import edgequant as eq

_spec = importlib.util.spec_from_file_location("zoo", Path(__file__).parents[1] / "bench" / "zoo.py")
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)

# SQNR floors (dB) of the integer program vs fp32 on these inputs, 2.6-7 dB under what they measure; ViT's is
# low because the zoo's tiny class token / position embedding sit near one LSB (see RESULTS.md)
FLOOR = {"vit": 10.0, "bert_layer": 28.0, "convnext": 30.0}


@pytest.mark.parametrize("name", list(zoo.NETS))
def test_architecture_goes_through(name):
    make, shape = zoo.NETS[name]
    torch.manual_seed(0)
    model = eq.models.randomize_bn(make().eval())
    gen = torch.Generator().manual_seed(1)
    calib, x = torch.randn(16, *shape, generator=gen), torch.randn(8, *shape, generator=gen)
    q = eq.quantize(model, "w8a8-pc", calib)
    with torch.no_grad():
        ref = model(x).flatten(1).numpy()
    y = np.asarray(q.run(x)).reshape(len(x), -1)
    assert zoo.sqnr_db(ref, y) >= FLOOR.get(name, 35.0)
    sim = np.asarray(q.simulate(x)).reshape(len(x), -1)
    assert np.mean(y.argmax(1) == sim.argmax(1)) >= 0.875
    got = np.asarray(q.run(x, backend="onnxruntime")).reshape(len(x), -1)
    want = np.asarray(q.run(x, rounding="onnxruntime")).reshape(len(x), -1)
    lsb = float(q.program.output_qparams.scale)
    assert np.abs(got - want).max() <= 1.01 * lsb
