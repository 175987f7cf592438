"""TFLite export: LiteRT's reference kernels reproduce the interpreter's gemmlowp mode bit for bit.

Needs the ``tflite`` extra (``tflite`` + ``flatbuffers`` to write files, ``ai-edge-litert`` to run
them); skipped with the reason below where it cannot be installed.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("tflite", reason="the 'tflite' schema package is not installed: pip install 'edgequant[tflite]'")
pytest.importorskip("ai_edge_litert.interpreter",
                    reason="ai-edge-litert (LiteRT) is not installed or has no wheel for this platform: "
                           "pip install 'edgequant[tflite]'")

import edgequant as eq  # noqa: E402
from edgequant import interpreter  # noqa: E402
from edgequant.errors import ExportError  # noqa: E402
from edgequant.export.tflite import to_tflite  # noqa: E402
from edgequant.export.tflite.run import run_tflite  # noqa: E402


def lsb(y: np.ndarray, ref: np.ndarray, q) -> np.ndarray:
    """Difference of two dequantized outputs in output LSBs (exact: both lie on the output grid)."""
    return np.round((y.astype(np.float64) - ref) / float(q.program.output_qparams.scale)).astype(np.int64)


def tensor_types(data: bytes) -> dict[str, int]:
    from tflite.Model import Model

    sg = Model.GetRootAsModel(data, 0).Subgraphs(0)
    return {sg.Tensors(i).Name().decode(): sg.Tensors(i).Type() for i in range(sg.TensorsLength())}


def operators(data: bytes) -> tuple[set[str], set[int]]:
    """The builtin operator names in the file and the fused activation codes of its CONV_2D,
    DEPTHWISE_CONV_2D, ADD and FULLY_CONNECTED operators (1 = RELU, 3 = RELU6)."""
    from tflite.BuiltinOperator import BuiltinOperator
    from tflite.BuiltinOptions import BuiltinOptions
    from tflite.Model import Model

    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    model = Model.GetRootAsModel(data, 0)
    sg = model.Subgraphs(0)
    ops, acts = set(), set()
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        ops.add(names[model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()])
        kind = op.BuiltinOptionsType()
        for tag, mod in ((BuiltinOptions.Conv2DOptions, "Conv2DOptions"), (BuiltinOptions.AddOptions, "AddOptions"),
                         (BuiltinOptions.DepthwiseConv2DOptions, "DepthwiseConv2DOptions"),
                         (BuiltinOptions.FullyConnectedOptions, "FullyConnectedOptions")):
            if kind == tag:
                opts = getattr(__import__(f"tflite.{mod}", fromlist=[mod]), mod)()
                table = op.BuiltinOptions()
                opts.Init(table.Bytes, table.Pos)
                acts.add(opts.FusedActivationFunction())
    return ops, acts


@pytest.fixture(scope="module")
def nets(digits):
    out = {}
    for name in ("digits_cnn", "resnet_digits", "mobilenet_v2_digits"):
        m = getattr(eq.models, name)(pretrained=True)
        out[name] = (m, eq.quantize(m, "w8a8-pc", digits[0]))
    return out


def test_export_front_door_writes_the_file_litert_runs(nets, digits_test_x, tmp_path):
    q = nets["digits_cnn"][1]
    path = tmp_path / "digits.tflite"
    q.export(path, format="tflite")  # the public front door
    x = digits_test_x.numpy()
    assert np.array_equal(run_tflite(path, x, kernels="reference"), interpreter.run(q.program, x, rounding="gemmlowp"))


@pytest.mark.parametrize("inputs", ["test split", "random"])
@pytest.mark.parametrize("name", ["digits_cnn", "resnet_digits", "mobilenet_v2_digits"])
def test_reference_kernels_bit_exact(nets, digits_test_x, name, inputs):
    """LiteRT's BUILTIN_REF kernels == the interpreter's gemmlowp mode, on every output, for the
    three nets on the digits test split and on random inputs (N(0, 6): negative pixels and values
    past the calibrated range saturate the input quantizer, the rest spreads over it)."""
    q = nets[name][1]
    if inputs == "test split":
        x = digits_test_x.numpy()
    else:
        x = np.random.default_rng(1).normal(0.0, 6.0, (200, 1, 8, 8)).astype(np.float32)
    ref = interpreter.run(q.program, x, rounding="gemmlowp")
    y = run_tflite(to_tflite(q), x, kernels="reference")
    assert y.shape == ref.shape == (len(x), 10)
    assert np.array_equal(y, ref)  # DEQUANTIZE is injective, so the int8 outputs are equal too


def test_optimized_kernels_within_a_few_lsb(nets, digits_test_x):
    """LiteRT's default kernels round differently in places (the histogram is in the bench); the
    difference stays a few LSB and accuracy on digits is unchanged."""
    x = digits_test_x.numpy()[:120]
    for name, (_, q) in nets.items():
        ref = interpreter.run(q.program, x)
        d = lsb(run_tflite(to_tflite(q), x, kernels="optimized"), ref, q)
        assert np.abs(d).max() <= 8, name


class Coverage(nn.Module):
    """Every exportable op and padding form: stride-2 conv (explicit pad), dilated depthwise,
    concat of differently scaled tensors, both avg-pool paddings, ceil-mode max pool, constant pad,
    a standalone clamp, a non-TFLite fused clamp, keepdim mean, residual add with ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.pw = nn.Conv2d(16, 8, 1)
        self.ap_same = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.ap_incl = nn.AvgPool2d(3, 1, 1, count_include_pad=True)
        self.mp = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.fc = nn.Linear(8, 6)
        self.fc2 = nn.Linear(8 * 4 * 4, 6)

    def forward(self, x):
        a = torch.relu(self.c1(x))                                  # (N, 8, 7, 7)
        b = torch.clamp(self.dw(a), -1.0, 2.5)                      # fused, not a TFLite activation
        y = self.pw(torch.cat([a, b], 1))
        y = F.relu6(self.ap_same(y) + self.ap_incl(y))
        z = torch.clamp(self.mp(F.pad(y, (1, 0, 0, 1), value=0.25)), max=3.0)   # (N, 8, 4, 4)
        g = torch.flatten(y.mean((2, 3), keepdim=True), 1)
        return self.fc(g) + self.fc2(torch.flatten(z, 1))


@pytest.fixture(scope="module")
def coverage():
    torch.manual_seed(0)
    m = Coverage().eval()
    x = torch.randn(320, 3, 13, 13)
    return m, x[:160], x[160:].numpy()


@pytest.mark.parametrize("recipe", ["w8a8-pc", "w8a8", "w4a8"])
def test_every_op_bit_exact(coverage, recipe):
    m, calib, x = coverage
    q = eq.quantize(m, recipe, [calib])
    ops = {i.op for i in q.program.instrs}
    assert {"conv", "linear", "add", "cat", "clamp", "maxpool", "avgpool", "mean", "reshape", "pad"} <= ops
    data = to_tflite(q)
    ops, acts = operators(data)
    assert {"QUANTIZE", "DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "CONCATENATION", "MAX_POOL_2D",
            "AVERAGE_POOL_2D", "MEAN", "RESHAPE", "PAD", "PADV2"} <= ops
    assert {1, 3} <= acts  # fused RELU and RELU6
    if recipe == "w4a8":
        types = tensor_types(data)
        assert all(types[n] == 17 for n in types if n.endswith("/weight"))  # INT4, depthwise too
    assert np.array_equal(run_tflite(data, x, "reference"), interpreter.run(q.program, x))


@pytest.mark.parametrize("recipe", ["w4a8", "w2a8-ternary"])
def test_int4_weights_are_stored_as_int4_and_run_bit_exact(nets, digits, digits_test_x, recipe):
    """<= 4-bit weights (ternary -1/0/+1 too) are packed INT4 tensors LiteRT runs, bit-exactly."""
    m = nets["digits_cnn"][0]
    q4 = eq.quantize(m, recipe, digits[0])
    data4 = to_tflite(q4)
    types = tensor_types(data4)
    bits = {f"{i.output}/weight": i.attrs["weight_bits"] for i in q4.program.instrs if "weight" in i.arrays}
    assert min(bits.values()) <= 4  # (the recipe may keep the first/last layer at 8 bits)
    assert all(types[n] == (17 if b <= 4 else 9) for n, b in bits.items())  # TensorType.INT4 / INT8
    data8 = to_tflite(nets["digits_cnn"][1])
    n_weights = sum(i.arrays["weight"].size for i in q4.program.instrs if i.attrs.get("weight_bits", 8) <= 4)
    assert len(data8) - len(data4) >= 0.49 * n_weights  # packed two per byte
    x = digits_test_x.numpy()
    ref = interpreter.run(q4.program, x)
    assert np.array_equal(run_tflite(data4, x, "reference"), ref)
    assert np.abs(lsb(run_tflite(data4, x, "optimized"), ref, q4)).max() <= 8


def test_nhwc_layout_takes_nhwc_input(nets, digits_test_x):
    q = nets["resnet_digits"][1]
    x = digits_test_x.numpy()[:64]
    y = run_tflite(to_tflite(q, layout="nhwc"), x.transpose(0, 2, 3, 1), "reference")
    assert np.array_equal(y, q.run(x))


def test_fully_connected_option_is_within_one_lsb(nets, digits_test_x):
    """LiteRT's int8 FULLY_CONNECTED requantizes with one rounding (CONV_2D, like the interpreter,
    with gemmlowp's two), hence the default 1x1 CONV_2D; the FC form is off by at most one LSB."""
    q = nets["digits_cnn"][1]
    x = digits_test_x.numpy()
    data = to_tflite(q, linear="fully_connected")
    assert "FULLY_CONNECTED" in operators(data)[0]
    d = lsb(run_tflite(data, x, "reference"), interpreter.run(q.program, x), q)
    assert np.abs(d).max() <= 1


def test_fp32_program_exports_for_the_float_baseline(nets, digits, digits_test_x):
    m = nets["mobilenet_v2_digits"][0]
    q = eq.quantize(m, "fp32", digits[0])
    x = digits_test_x.numpy()[:100]
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_tflite(to_tflite(q), x, "optimized"), want, atol=1e-4)


def test_cli_export_tflite(nets, tmp_path):
    from edgequant import cli

    art = tmp_path / "model.edgequant"
    nets["digits_cnn"][1].save(art)
    out = tmp_path / "model.tflite"
    assert cli.main(["export", str(art), "-o", str(out), "--format", "tflite"]) == 0
    x = np.random.default_rng(0).uniform(0, 16, (8, 1, 8, 8)).astype(np.float32)
    assert np.array_equal(run_tflite(out, x), interpreter.run(eq.load(art).program, x))


def test_recipes_tflite_cannot_run_fail_clearly(digits):
    m = eq.models.digits_cnn(pretrained=True)
    with pytest.raises(ExportError, match="cannot target TFLite.*4-bit activation"):
        to_tflite(eq.quantize(m, "w4a4", digits[0]))
    with pytest.raises(ExportError, match="cannot target TFLite"):
        to_tflite(eq.quantize(m, "dyn8", digits[0]))


def test_bad_options_and_unsupported_layers(nets, tmp_path):
    q = nets["digits_cnn"][1]
    with pytest.raises(ExportError, match="unknown TFLite export option"):
        q.export(tmp_path / "m.tflite", format="tflite", style="qdq")
    with pytest.raises(ExportError, match="layout"):
        to_tflite(q, layout="chwn")
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2)).eval()
    x = torch.randn(16, 4, 6, 6)
    with pytest.raises(ExportError, match="grouped convolution"):
        to_tflite(eq.quantize(grouped, "w8a8-pc", [x]))


def test_file_follows_the_tflite_int8_quantization_spec(nets):
    """Read back from the flatbuffer: per-channel int8 weights in [-127, 127] with zero point 0,
    int32 bias with zero point 0 and scale s_in * s_w[c], int8 activations in between."""
    from tflite.Model import Model

    data = to_tflite(nets["mobilenet_v2_digits"][1])
    model = Model.GetRootAsModel(data, 0)
    sg = model.Subgraphs(0)
    n_checked = 0
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() not in (3, 4):  # CONV_2D, DEPTHWISE_CONV_2D
            continue
        x, w, b = (sg.Tensors(op.Inputs(k)) for k in range(3))
        y = sg.Tensors(op.Outputs(0))
        assert x.Type() == y.Type() == 9 and w.Type() == 9 and b.Type() == 2  # INT8, INT8, INT32
        wq, bq = w.Quantization(), b.Quantization()
        channels = w.ShapeAsNumpy()[wq.QuantizedDimension()]
        assert wq.ScaleLength() == channels and not wq.ZeroPointAsNumpy().any()
        buf = model.Buffers(w.Buffer()).DataAsNumpy().view(np.int8)
        assert buf.size == np.prod(w.ShapeAsNumpy()) and buf.min() >= -127
        assert not bq.ZeroPointAsNumpy().any()
        s_in = np.float32(x.Quantization().ScaleAsNumpy()[0])
        assert np.array_equal(bq.ScaleAsNumpy(), (s_in * wq.ScaleAsNumpy()).astype(np.float32))
        n_checked += 1
    assert n_checked >= 20
