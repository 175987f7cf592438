"""ONNX export: the files pass onnx.checker, ONNX Runtime runs them as integer kernels with all
optimizations on, and their outputs match the interpreter's "onnxruntime" rounding mode.

Parity is measured on the integers: ONNX Runtime's float output is ``(q - zp) * scale`` with the
program's output qparams, so ``round(y / scale) + zp`` recovers its output integers exactly.
"""
import collections

import numpy as np
import onnx
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

import edgequant as eq  # noqa: E402
from edgequant import cli  # noqa: E402
from edgequant.backends import ort_session  # noqa: E402
from edgequant.errors import ExportError  # noqa: E402
from edgequant.export.onnx import to_onnx  # noqa: E402

NETS = ("digits_cnn", "resnet_digits", "mobilenet_v2_digits")
FLOAT_COMPUTE = {"Conv", "Gemm", "MatMul", "Add", "AveragePool", "GlobalAveragePool", "Concat"}


@pytest.fixture(scope="module")
def nets(digits, digits_test_x):
    """name -> (quantized w8a8-pc model, its reference output integers on the test split)."""
    x = digits_test_x.numpy()
    out = {}
    for name in NETS:
        q = eq.quantize(getattr(eq.models, name)(pretrained=True), "w8a8-pc", digits[0], max_calib_samples=256)
        out[name] = (q, q.run(x, rounding="onnxruntime", return_int=True))
    return out


def session(path_or_bytes, optimized_path=None) -> "ort.InferenceSession":
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else path_or_bytes, so,
                                providers=["CPUExecutionProvider"])


def out_ints(y: np.ndarray, q) -> np.ndarray:
    qp = q.program.output_qparams
    return np.round(y.astype(np.float64) / float(qp.scale)).astype(np.int64) + int(qp.zero_point)


def assert_parity(y: np.ndarray, ref_int: np.ndarray, q) -> None:
    """Identical argmax on >= 99.9% of samples and every output integer within 1 LSB."""
    got = out_ints(y, q)
    assert got.shape == ref_int.shape
    diff = np.abs(got - ref_int.astype(np.int64))
    assert diff.max() <= 1, f"{int((diff > 1).sum())} outputs differ by more than 1 LSB (max {diff.max()})"
    assert np.mean(got.argmax(1) == ref_int.argmax(1)) >= 0.999


@pytest.mark.parametrize("style", ["qdq", "qoperator"])
@pytest.mark.parametrize("name", NETS)
def test_export_checker_integer_kernels_and_parity(nets, digits_test_x, tmp_path, name, style):
    q, ref = nets[name]
    path = tmp_path / f"{name}.onnx"
    q.export(path, format="onnx", style=style)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == 21
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["edgequant.recipe"] == "w8a8-pc" and meta["edgequant.activation_type"] == "uint8"

    sess = session(path, optimized_path=tmp_path / "opt.onnx")
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    # ONNX Runtime fused every conv/linear into its u8s8 integer kernels: no float compute left,
    # one QuantizeLinear at the input and one DequantizeLinear at the output
    assert ops["QLinearConv"] >= 3 and not FLOAT_COMPUTE & set(ops), dict(ops)
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, dict(ops)

    y = sess.run(None, {q.program.input: digits_test_x.numpy()})[0]
    assert_parity(y, ref, q)


def test_channel_alignment_is_exact_and_can_be_turned_off(nets, digits_test_x):
    """Dense convs get input channels padded to 4 (ORT's u8s8 kernels step 4 channels): the
    digits stem has 1 channel -> a Pad with the zero point and a (C_out, 4, k, k) weight."""
    q, ref = nets["resnet_digits"]
    aligned, plain = to_onnx(q), to_onnx(q, align_channels=0)
    first_w = lambda m: [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4][0]  # noqa: E731
    assert list(first_w(aligned).dims)[1] == 4 and list(first_w(plain).dims)[1] == 1
    assert sum(n.op_type == "Pad" for n in aligned.graph.node) == 1
    x = digits_test_x.numpy()
    ya = session(aligned.SerializeToString()).run(None, {q.program.input: x})[0]
    yp = session(plain.SerializeToString()).run(None, {q.program.input: x})[0]
    np.testing.assert_array_equal(ya, yp)
    assert_parity(ya, ref, q)
    with pytest.raises(ExportError, match="align_channels"):
        to_onnx(q, align_channels=-1)


def test_int8_activations_option_still_bit_exact(nets, digits_test_x):
    q, ref = nets["digits_cnn"]
    with pytest.warns(UserWarning, match="uint8"):
        model = to_onnx(q, activation_type="int8")
    y = session(model.SerializeToString()).run(None, {q.program.input: digits_test_x.numpy()})[0]
    assert_parity(y, ref, q)


@pytest.mark.parametrize("name", ["digits_cnn", "mobilenet_v2_digits"])
def test_int4_weights_opset21_run_and_shrink_the_file(nets, digits, digits_test_x, tmp_path, name):
    q4 = eq.quantize(getattr(eq.models, name)(pretrained=True), "w4a8", digits[0], max_calib_samples=128)
    path = tmp_path / "w4.onnx"
    q4.export(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    int4 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert int4, "no INT4 initializers in a w4a8 export"
    n4 = sum(int(np.prod(t.dims)) for t in int4)
    assert sum(len(t.raw_data) for t in int4) == sum((int(np.prod(t.dims)) + 1) // 2 for t in int4)  # 2 per byte
    assert n4 >= 0.5 * sum(p.numel() for p in getattr(eq.models, name)().parameters())

    x = digits_test_x.numpy()
    y = session(path).run(None, {q4.program.input: x})[0]
    assert_parity(y, q4.run(x, rounding="onnxruntime", return_int=True), q4)

    int8_bytes = len(to_onnx(nets[name][0]).SerializeToString())
    assert path.stat().st_size < 0.75 * int8_bytes


def test_file_sizes_on_digits_nets(nets, digits):
    """int4 < int8 < fp32. Tiny nets carry ~13 bytes per output channel (float scale, int32 bias,
    bias scale, weight zero point), so the 0.27x bound is checked on the ImageNet nets below."""
    for name in NETS:
        q8 = nets[name][0]
        fp32 = len(to_onnx(eq.quantize(getattr(eq.models, name)(pretrained=True), "fp32", digits[0])).SerializeToString())
        int8 = len(to_onnx(q8).SerializeToString())
        n = sum(p.numel() for p in getattr(eq.models, name)().parameters())
        assert n <= int8 < 0.4 * fp32, (name, int8, fp32)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_file_size_int8_at_most_0_27_of_fp32_on_imagenet_nets(arch):
    """The deployable-size claim on the ImageNet-shape nets (random weights; file size does not
    depend on the input resolution, so a 32x32 calibration batch keeps this fast)."""
    torch.manual_seed(0)
    m = eq.models.randomize_bn(getattr(eq.models, arch)()).eval()
    x = torch.randn(2, 3, 32, 32)
    sizes = {r: len(to_onnx(eq.quantize(m, r, x), check=False).SerializeToString()) for r in ("fp32", "w8a8-pc", "w4a8")}
    assert sizes["w8a8-pc"] <= 0.27 * sizes["fp32"], sizes
    assert sizes["w4a8"] < 0.6 * sizes["w8a8-pc"], sizes


def test_run_backend_onnxruntime_is_the_exported_model(nets, digits_test_x):
    q, ref = nets["resnet_digits"]
    x = digits_test_x[:64]
    y = q.run(x, backend="onnxruntime")
    assert isinstance(y, torch.Tensor) and y.shape == (64, 10)
    assert_parity(y.numpy(), ref[:64], q)
    again = q.run(x.numpy(), backend="onnxruntime")
    np.testing.assert_array_equal(again, y.numpy())
    assert len(q.__dict__["_ort_sessions"]) == 1  # one session, reused
    with pytest.raises(eq.errors.InputError, match="backend"):
        q.run(x, backend="tensorrt")


def test_cli_export_writes_a_runnable_file(nets, digits_test_x, tmp_path):
    q, ref = nets["digits_cnn"]
    q.save(tmp_path / "art")
    for style in ("qdq", "qoperator"):
        out = tmp_path / f"m_{style}.onnx"
        assert cli.main(["export", str(tmp_path / "art"), "-o", str(out), "--style", style]) == 0
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert meta["edgequant.style"] == style
        y = session(out).run(None, {q.program.input: digits_test_x.numpy()})[0]
        assert_parity(y, ref, q)


def test_binary_activations_refused_naming_the_recipe(digits, tmp_path, capsys):
    q = eq.quantize(eq.models.digits_cnn(pretrained=True), "w1a1-xnor", digits[0], max_calib_samples=64)
    with pytest.raises(ExportError, match=r"recipe 'w1a1-xnor' cannot be exported to ONNX.*binary.*interpreter"):
        q.export(tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()
    with pytest.raises(ExportError, match="w1a1-xnor"):
        q.run(digits[1].dataset[0][0][None], backend="onnxruntime")
    q.save(tmp_path / "art")
    assert cli.main(["export", str(tmp_path / "art"), "-o", str(tmp_path / "b.onnx")]) == 2
    assert "w1a1-xnor" in capsys.readouterr().err


def test_bad_options_are_export_errors(nets, tmp_path):
    q = nets["digits_cnn"][0]
    with pytest.raises(ExportError, match="style"):
        q.export(tmp_path / "x.onnx", style="qlinear")
    with pytest.raises(ExportError, match="activation_type"):
        to_onnx(q, activation_type="int16")
    with pytest.raises(ExportError, match="unknown ONNX export option"):
        q.export(tmp_path / "x.onnx", opset=13)
    with pytest.raises(ExportError, match="format"):
        q.export(tmp_path / "x.onnx", format="coreml")
    assert ort_session(q) is ort_session(q)


def test_sweep_fast_runner_uses_the_sweeps_thread_count(nets, digits_test_x):
    from edgequant.sweep import timing

    q, ref = nets["digits_cnn"]
    fn = timing.fast_runner(q, "onnxruntime", threads=1)
    assert_parity(fn(digits_test_x[:32].numpy()), ref[:32], q)
    assert ort_session(q, 1).get_session_options().intra_op_num_threads == 1
    assert any(k[1] == 1 for k in q.__dict__["_ort_sessions"])


class _DeadChannelNet(torch.nn.Module):
    """Stem (8-bit), depthwise + pointwise (binary under w1a8-xnor), ReLU6, residual, linear head.
    One output channel of the stem and of the pointwise conv is dead (BN-folded weights ~1e-8
    with a large bias, as in EfficientNet-Lite1): its int32 bias ``b / (s_in * s_w)`` saturates."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        nn = torch.nn
        self.stem, self.dw = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw, self.fc = nn.Conv2d(8, 8, 1), nn.Linear(8, 10)
        for m in (self.stem, self.dw, self.pw, self.fc):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
        for conv, c in ((self.stem, 2), (self.pw, 5)):
            conv.weight.data[c] *= 1e-8
            conv.bias.data[c] = -100.0
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu6 = torch.nn.functional.relu6
        h = relu6(self.stem(x))
        h = h + relu6(self.pw(relu6(self.dw(h))))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("recipe", ["w1a8-xnor", "w8a8-pc"])
def test_saturated_int32_bias_of_dead_channels_keeps_export_parity(digits, digits_test_x, recipe):
    """Regression (w1a8-xnor on EfficientNet-Lite1: up to 22 LSB off the interpreter): a channel
    with a ~1e-9 weight scale got an int32 bias clipped at INT32_MIN/MAX; the interpreter adds
    ``bias + sum(x * w)`` in int64, ONNX Runtime in int32, where it wrapped around. The lowering
    now bounds the bias so that no partial sum leaves int32 (``qmath.bias_limit``)."""
    from edgequant import qmath

    q = eq.quantize(_DeadChannelNet(), recipe, digits[0], max_calib_samples=256)
    for ins in q.program.instrs:
        if "bias" in ins.arrays and "weight" in ins.arrays:
            headroom = 2 * 255 * np.abs(ins.arrays["weight"].astype(np.int64)).reshape(len(ins.arrays["bias"]), -1).sum(1)
            assert np.all(np.abs(ins.arrays["bias"].astype(np.int64)) + headroom <= qmath.INT32_MAX), ins.output
    x = digits_test_x.numpy()
    ref = q.run(x, rounding="onnxruntime", return_int=True)
    assert_parity(q.run(x, backend="onnxruntime"), ref, q)
    assert np.array_equal(out_ints(q.run(x, backend="onnxruntime"), q), ref.astype(np.int64))
