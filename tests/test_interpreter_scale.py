"""The interpreter at real size: chunked batches are bit-identical to whole batches, memory stays
bounded by the plan, and the fast exact float32 accumulation equals the int64 reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant import interpreter
from edgequant.kernels import conv as conv_kernels, gemm, native
from edgequant.program import Instr


class _Net(nn.Module):
    """Every op family the chunking must keep per-sample: dense/depthwise/grouped/strided/dilated
    convs with asymmetric padding, residual add, hardswish table, SE multiply, pooling, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 16, 3, 2), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 2, dilation=2, groups=16), nn.BatchNorm2d(16), nn.Hardswish())
        self.gr = nn.Conv2d(16, 16, 3, 1, 1, groups=4)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 16, 1), nn.Sigmoid())
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    def forward(self, x):
        y = self.stem(x)
        y = y + self.gr(self.dw(y))
        return self.head(y * self.se(y))


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    m = _Net().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(13, 3, 16, 16)
    return m, x


@pytest.mark.parametrize("recipe", ["w8a8-pc", "w4a4", "w2a4-aciq"])
@pytest.mark.parametrize("rounding", ["gemmlowp", "onnxruntime"])
def test_chunked_run_is_bit_identical(net_and_data, recipe, rounding):
    m, x = net_and_data
    q = eq.quantize(m, recipe, [x[:8]])
    whole = interpreter.run(q.program, x.numpy(), rounding=rounding, return_int=True, chunk=x.shape[0])
    for chunk in (1, 3, 5):
        part = interpreter.run(q.program, x.numpy(), rounding=rounding, return_int=True, chunk=chunk)
        np.testing.assert_array_equal(part, whole)
    tiny_budget = interpreter.run(q.program, x.numpy(), rounding=rounding, return_int=True, memory_mb=1e-3)
    np.testing.assert_array_equal(tiny_budget, whole)
    np.testing.assert_array_equal(q.run(x, rounding=rounding, return_int=True, chunk=2).numpy(), whole)  # public API
    np.testing.assert_array_equal(q.run(x.numpy(), rounding=rounding, return_int=True, memory_mb=1e-3), whole)
    sim_whole = interpreter.simulate(q.program, x.numpy(), rounding=rounding, chunk=x.shape[0])
    sim_parts = interpreter.simulate(q.program, x.numpy(), rounding=rounding, chunk=4)
    assert torch.equal(sim_whole, sim_parts)


def test_chunked_float_program_within_float_rounding(net_and_data):
    """fp16/fp32 programs are float arithmetic: the float library may block a batch differently,
    so chunks agree to float32 rounding, not bit for bit (the integer programs above do)."""
    m, x = net_and_data
    q = eq.quantize(m, "fp16", [x[:8]])
    whole = interpreter.run(q.program, x.numpy(), chunk=x.shape[0])
    np.testing.assert_allclose(interpreter.run(q.program, x.numpy(), chunk=3), whole, rtol=1e-5, atol=1e-6)


def test_memory_plan_sizes_chunks_from_the_program(net_and_data):
    m, x = net_and_data
    q = eq.quantize(m, "w8a8-pc", [x[:8]])
    plan = interpreter.memory_plan(q.program)
    assert plan.bytes_per_sample > 16 * 16 * 3 * 4  # at least the float input of one sample
    assert not plan.batch_wide
    assert plan.chunk(1000, memory_mb=plan.bytes_per_sample * 10 / 2**20) == 10
    assert plan.chunk(1000, memory_mb=1e-6) == 1  # never zero
    assert plan.chunk(3, memory_mb=1e6) == 3


def test_dynamic_programs_run_the_batch_whole(net_and_data):
    """dyn8 takes its activation range from the whole batch: chunking would change the numbers."""
    m, x = net_and_data
    q = eq.quantize(m, "dyn8", [x[:8]])
    assert interpreter.memory_plan(q.program).batch_wide
    whole = interpreter.run(q.program, x.numpy(), chunk=x.shape[0])
    np.testing.assert_array_equal(interpreter.run(q.program, x.numpy(), chunk=2), whole)
    np.testing.assert_array_equal(interpreter.run(q.program, x.numpy(), memory_mb=1e-3), whole)


def test_native_and_numpy_spec_agree_on_a_whole_program(net_and_data, monkeypatch):
    m, x = net_and_data
    q = eq.quantize(m, "w8a8-pc", [x[:8]])
    for rounding in ("gemmlowp", "onnxruntime"):
        fast = interpreter.run(q.program, x.numpy(), rounding=rounding, return_int=True)
        monkeypatch.setattr(native, "LIB", None)
        monkeypatch.setattr(conv_kernels, "float_accumulate", lambda *a: None)  # the int64 route too
        spec = interpreter.run(q.program, x.numpy(), rounding=rounding, return_int=True)
        monkeypatch.undo()
        np.testing.assert_array_equal(fast, spec)


def _conv_instr(w: np.ndarray, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, dims=2) -> Instr:
    return Instr("conv", ["x"], "y", attrs={"stride": stride, "padding": padding, "dilation": dilation,
                                           "groups": groups, "dims": dims}, arrays={"weight": w})


@pytest.mark.parametrize("cfg", [
    dict(cin=8, cout=12, k=3, stride=(2, 2), padding=(1, 1, 1, 1)),
    dict(cin=8, cout=8, k=3, padding=(0, 1, 0, 1), groups=8),  # depthwise, asymmetric (TF 'same')
    dict(cin=8, cout=12, k=5, padding=(2, 2, 2, 2), dilation=(2, 2), groups=4),
    dict(cin=300, cout=16, k=1),  # 1x1 with a long reduction
])
@pytest.mark.parametrize("zx", [0, -128, 37])
def test_float_accumulate_is_exact(cfg, zx):
    rng = np.random.default_rng(1)
    g = cfg.get("groups", 1)
    w = rng.integers(-127, 128, size=(cfg["cout"], cfg["cin"] // g, cfg["k"], cfg["k"])).astype(np.int8)
    x = rng.integers(-128, 128, size=(3, cfg["cin"], 11, 9)).astype(np.int8)
    ins = _conv_instr(w, cfg.get("stride", (1, 1)), cfg.get("padding", (0, 0, 0, 0)), cfg.get("dilation", (1, 1)), g)
    ref = gemm.conv2d(x.astype(np.int64), w.astype(np.int64), ins.attrs["stride"], ins.attrs["padding"],
                      ins.attrs["dilation"], g, pad_value=zx, exact=True)
    ref = ref - zx * w.astype(np.int64).reshape(w.shape[0], -1).sum(1).reshape(1, -1, 1, 1)
    fast = conv_kernels.float_accumulate(ins, x, zx)
    assert fast is not None and fast.dtype == np.float32
    np.testing.assert_array_equal(fast.astype(np.int64), ref)


def test_long_reductions_split_into_exact_slices():
    """|x - zx| <= 255 and sum|w| = 127 * 600 can pass 2^24: the reduction is cut into input-channel
    ranges that each fit float32, added in float64 -- still exact."""
    w = np.full((2, 600, 1, 1), 127, np.int8)
    w[1, ::2] = -127
    x = np.full((1, 600, 2, 2), 127, np.int8)
    acc = conv_kernels.float_accumulate(_conv_instr(w), x, -128)
    assert acc is not None and acc.dtype == np.float64
    assert int(acc[0, 0, 0, 0]) == 600 * 127 * 255 and int(acc[0, 1, 0, 0]) == 0
    lin = Instr("linear", ["x"], "y", arrays={"weight": w[:, :, 0, 0]})
    got = conv_kernels.float_accumulate(lin, x[:, :, 0, 0], -128)
    np.testing.assert_array_equal(got, [[600 * 127 * 255, 0]])


def test_grouped_conv_too_long_for_float32_takes_the_int64_route():
    w = np.full((4, 600, 1, 1), 127, np.int8)
    x = np.full((1, 1200, 2, 2), 127, np.int8)
    ins = _conv_instr(w, groups=2)
    assert conv_kernels.float_accumulate(ins, x, -128) is None
    acc = conv_kernels.int_accumulate(ins, x, -128)
    assert acc.dtype == np.int64 and int(acc[0, 3, 1, 1]) == 600 * 127 * 255


def test_exact_float_ignores_user_precision_settings():
    """A user who allows bf16/TF32 float32 math must not make the integer program inexact."""
    before = torch.backends.mkldnn.conv.fp32_precision
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    try:
        with gemm.exact_float():
            assert torch.backends.mkldnn.conv.fp32_precision == "ieee"
        assert torch.backends.mkldnn.conv.fp32_precision == "bf16"
    finally:
        torch.backends.mkldnn.conv.fp32_precision = before
