"""The int8 spine: capture -> calibrate -> integer program, measured on real digits."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant.capture import capture
from edgequant.errors import CalibrationError, CaptureError, InputError, RecipeError, UnsupportedOpError
from edgequant.graph_exec import GraphModule
from edgequant.passes import prepare
from edgequant.training import accuracy


@pytest.fixture(scope="module")
def fp32_acc(digits_model, digits):
    return accuracy(digits_model, digits[1])


@pytest.fixture(scope="module")
def quantized(digits_model, digits):
    return {r: eq.quantize(digits_model, r, digits[0]) for r in ("fp16", "dyn8", "w8a8", "w8a8-pc")}


def test_pretrained_digits_cnn_is_trained(fp32_acc):
    assert fp32_acc > 97.0


def test_w8a8_pc_accuracy_within_half_point(quantized, digits, fp32_acc):
    acc = accuracy(quantized["w8a8-pc"].run, digits[1])
    assert acc >= fp32_acc - 0.5


@pytest.mark.parametrize("recipe", ["fp16", "dyn8", "w8a8"])
def test_other_recipes_accuracy(quantized, digits, fp32_acc, recipe):
    assert accuracy(quantized[recipe].run, digits[1]) >= fp32_acc - 1.0


@pytest.mark.parametrize("rounding", ["gemmlowp", "onnxruntime"])
@pytest.mark.parametrize("recipe", ["w8a8", "w8a8-pc"])
def test_run_matches_simulate_on_digits(quantized, digits_test_x, recipe, rounding):
    q = quantized[recipe]
    ri = q.run(digits_test_x, rounding=rounding, return_int=True).int()
    si = q.simulate(digits_test_x, rounding=rounding, return_int=True).int()
    assert int((ri - si).abs().max()) <= 1
    agree = (q.run(digits_test_x, rounding=rounding).argmax(1) == q.simulate(digits_test_x, rounding=rounding).argmax(1)).float().mean()
    assert float(agree) >= 0.995


def test_dynamic_run_matches_simulate(quantized, digits_test_x):
    q = quantized["dyn8"]
    r, s = q.run(digits_test_x), q.simulate(digits_test_x)
    assert float((r.argmax(1) == s.argmax(1)).float().mean()) >= 0.995
    # float32 vs float64 division may flip a rounding of the run-time-quantized input: ~1 LSB effects
    assert float((r - s).abs().max()) <= 0.01 * float(s.abs().max())


def test_size_ratio(quantized):
    q = quantized["w8a8-pc"]
    assert q.size_bytes <= 0.27 * q.float_size_bytes
    assert quantized["fp16"].size_bytes <= 0.51 * q.float_size_bytes


def test_program_is_integer_inside(quantized, digits_test_x):
    """Between quantize and dequantize every tensor is int8 and every weight integer."""
    p = quantized["w8a8-pc"].program
    assert p.instrs[0].op == "quantize" and p.instrs[-1].op == "dequantize"
    for ins in p.instrs[1:-1]:
        assert p.tensors[ins.output].dtype == "int8"
        for k, a in ins.arrays.items():
            if k in ("weight", "bias", "m0", "shift"):
                assert np.issubdtype(a.dtype, np.integer), (ins.op, k)


@pytest.mark.parametrize("make", [
    lambda: eq.models.randomize_bn(eq.models.resnet_digits(pretrained=False)),
    lambda: eq.models.randomize_bn(eq.models.mobilenet_v2_digits(pretrained=False)),
    lambda: eq.models.randomize_bn(eq.models.ResNet(layers=(1, 1), widths=(8, 16), in_ch=3, num_classes=7)).eval(),
])
@pytest.mark.parametrize("rounding", ["gemmlowp", "onnxruntime"])
def test_resnet_mobilenet_run_matches_simulate(make, rounding):
    torch.manual_seed(0)
    model = make()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    shape = (1, 8, 8) if first_conv.in_channels == 1 else (3, 32, 32)
    calib = [torch.rand(32, *shape) for _ in range(2)]
    q = eq.quantize(model, "w8a8-pc", calib)
    x = torch.rand(64, *shape)
    ri, si = q.run(x, rounding=rounding, return_int=True).int(), q.simulate(x, rounding=rounding, return_int=True).int()
    assert int((ri - si).abs().max()) <= 1
    assert float((q.run(x, rounding=rounding).argmax(1) == q.simulate(x, rounding=rounding).argmax(1)).float().mean()) >= 0.995
    with torch.no_grad():  # and the program still computes the model
        ref = model(x)
    err = (q.run(x) - ref).abs().max() / ref.abs().max()
    assert float(err) < 0.2


class Coverage(nn.Module):
    """Every supported op in one net: conv1d, dilation, groups, standalone BN, pad, pools, cat, clamp."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.mp = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.ap = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.c1d = nn.Conv1d(16, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = nn.functional.hardtanh(self.c2(a), -1.0, 2.0)
        y = self.bn(torch.cat([a, b], 1))
        y = self.ap(self.mp(y)) + nn.functional.pad(self.mp(y), (0, 0, 0, 0))
        y = torch.clamp(y, min=-0.5)
        z = self.c1d(y.flatten(2))
        z = nn.functional.adaptive_avg_pool2d(z.unsqueeze(-1), 1).flatten(1)
        return self.fc(z)


def test_capture_covers_supported_ops_and_matches_float():
    torch.manual_seed(0)
    m = eq.models.randomize_bn(Coverage()).eval()
    x = torch.randn(4, 3, 15, 15)
    g = prepare(capture(m, x))
    with torch.no_grad():
        torch.testing.assert_close(GraphModule(g)(x), m(x), atol=1e-5, rtol=1e-4)
    for rounding in ("gemmlowp", "onnxruntime"):
        q = eq.quantize(m, "w8a8-pc", [torch.randn(16, 3, 15, 15)])
        ri, si = q.run(x, rounding=rounding, return_int=True).int(), q.simulate(x, rounding=rounding, return_int=True).int()
        assert int((ri - si).abs().max()) <= 1
    for r in ("fp32", "fp16", "dyn8"):
        q = eq.quantize(m, r, [x])
        np.testing.assert_allclose(q.run(x).numpy(), m(x).detach().numpy(), atol=0.1 if r == "dyn8" else 2e-2)


def test_any_batch_size(quantized, digits_test_x):
    q = quantized["w8a8-pc"]
    full = q.run(digits_test_x[:7])
    one = torch.cat([q.run(digits_test_x[i : i + 1]) for i in range(7)])
    torch.testing.assert_close(full, one)


def test_user_model_untouched(digits, digits_model):
    m = copy.deepcopy(digits_model).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    eq.quantize(m, "w8a8-pc", digits[0])
    assert m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_recipe_json_round_trip():
    for r in eq.RECIPES.values():
        assert eq.Recipe.from_json(r.to_json()) == r


# ---- errors a user can hit ---------------------------------------------------------------------
class Sinusy(nn.Module):  # sin: no integer kernel (sigmoid and friends are lookup tables now)
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sin(self.fc(x))


def test_unsupported_op_names_node_and_op():
    with pytest.raises(UnsupportedOpError, match=r"aten.sin") as e:
        eq.quantize(Sinusy(), "w8a8-pc", [torch.randn(8, 4)])
    assert "node 'sin'" in str(e.value)


def test_nan_calibration_rejected(digits_model):
    x = torch.rand(16, 1, 8, 8)
    x[3, 0, 2, 2] = float("nan")
    with pytest.raises(CalibrationError, match="NaN"):
        eq.quantize(digits_model, "w8a8-pc", [torch.rand(16, 1, 8, 8), x])


def test_empty_calibration_rejected(digits_model):
    with pytest.raises(CalibrationError, match="empty"):
        eq.quantize(digits_model, "w8a8-pc", [])
    with pytest.raises(CalibrationError, match="empty"):
        eq.quantize(digits_model, "w8a8-pc", [torch.empty(0, 1, 8, 8)], example_input=torch.rand(2, 1, 8, 8))


def test_single_sample_calibration_warns(digits_model):
    with pytest.warns(UserWarning, match="single sample"):
        eq.quantize(digits_model, "w8a8-pc", [torch.rand(1, 1, 8, 8)])


def test_wrong_input_shape(quantized):
    with pytest.raises(InputError, match=r"\(N, 1, 8, 8\)"):
        quantized["w8a8-pc"].run(torch.rand(2, 1, 9, 9))


def test_nan_input_rejected(quantized):
    x = torch.rand(2, 1, 8, 8)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or inf"):
        quantized["w8a8-pc"].run(x)


def test_unknown_recipe(digits_model, digits):
    with pytest.raises(RecipeError, match="w9a9"):
        eq.quantize(digits_model, "w9a9", digits[0])


def test_training_mode_batchnorm_is_rejected_clearly():
    class Fn(nn.Module):
        def forward(self, x):
            return nn.functional.batch_norm(x, torch.zeros(3), torch.ones(3), training=True)

    with pytest.raises((CaptureError, UnsupportedOpError)):
        eq.quantize(Fn(), "w8a8-pc", [torch.randn(4, 3, 4, 4)])
