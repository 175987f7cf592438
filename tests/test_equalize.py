"""Cross-layer equalization (recipe option ``equalize``, issue 14): the float function is kept
(exactly for identity/ReLU pairs; on the calibration data for ReLU6 pairs), the per-tensor
activation grid gets finer, bad options are refused."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import edgequant as eq
from edgequant.api import capture_prepared
from edgequant.graph_exec import GraphModule
from edgequant.lowbit.equalize import equalize, find_groups


def _float(g, x):
    with torch.no_grad():
        return GraphModule(g)(x)


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_v2_digits"])
def test_equalization_preserves_the_float_function(digits, name) -> None:
    calib, test = digits
    cx = torch.cat([b for b, _ in calib])
    tx = torch.cat([b for b, _ in test])
    g = capture_prepared(getattr(eq.models, name)(pretrained=True), cx[:2])
    g2, d = equalize(g, cx, "data")
    assert d and any(float(v.max()) > 1.5 for v in d.values())  # it did rescale channels
    ref = _float(g, cx)
    assert float((_float(g2, cx) - ref).abs().max()) <= 1e-4 * float(ref.abs().max())  # exact on calibration data
    g3, d3 = equalize(g, cx, "exact")  # identity/ReLU pairs only: exact on any input
    ref_t = _float(g, tx)
    assert float((_float(g3, tx) - ref_t).abs().max()) <= 1e-4 * float(ref_t.abs().max())
    if name == "resnet_digits":  # all its pairs are ReLU: 'data' is exact everywhere too
        assert d3 and float((_float(g2, tx) - ref_t).abs().max()) <= 1e-4 * float(ref_t.abs().max())
    else:  # ReLU6 pairs are not taken in 'exact' mode
        assert all(a.attrs.get("act") in (None, (0.0, float("inf"))) for ps, _, _ in find_groups(g, "exact") for a in ps)


class _Wide(torch.nn.Module):
    """conv -> ReLU6 -> 1x1 conv; one channel 50x wider than the others, which the 1x1 conv weighs
    50x less: every channel matters to the output alike, the per-tensor grid suits one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c = torch.nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.a.weight[1:] *= 0.02
            self.a.bias.fill_(0.01)
            self.c.weight[:, 0] *= 0.02

    def forward(self, x):
        return self.c(torch.nn.functional.relu6(self.a(x)))


def test_equalization_lowers_the_integer_program_error() -> None:
    model = _Wide().eval()
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        ref = model(x).numpy()
    base = eq.get_recipe("w8a8-pc")
    errs = {}
    for eqz in (None, True):
        r = dataclasses.replace(base, name="t", options=base.options + ((("equalize", eqz),) if eqz else ()))
        q = eq.quantize(model, r, [x[:32], x[32:]])
        errs[eqz] = float(np.mean((np.asarray(q.run(x.numpy())) - ref) ** 2))
    assert errs[True] < 0.5 * errs[None], errs


@pytest.mark.parametrize("opts,match", [((("equalize", "sometimes"),), "equalize"),
                                        ((("equalize", True), ("equalize_alpha", 2.0)), "equalize_alpha")])
def test_equalize_options_are_checked(digits, opts, match) -> None:
    calib, _ = digits
    bad = dataclasses.replace(eq.get_recipe("w8a8-pc"), name="bad", options=opts)
    with pytest.raises(eq.errors.RecipeError, match=match):
        eq.quantize(eq.models.digits_cnn(pretrained=True), bad, calib)
