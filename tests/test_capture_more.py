"""Models we have not seen: MobileNetV3/EfficientNet-style blocks (hardswish, SiLU, GELU, squeeze-and-
excitation gates) captured, calibrated and run as integer programs; lookup tables, the SE multiply,
ONNX parity, and clear errors where an exporter or the capture cannot follow."""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant import cli
from edgequant.errors import UnsupportedOpError
from edgequant.interpreter import run as run_program
from edgequant.kernels import RUN, SIM
from edgequant.kernels.context import KernelContext
from edgequant.kernels.lut import build_table
from edgequant.program import Instr, TensorInfo
from edgequant.qmath import QParams
from edgequant.sweep import plugins
from edgequant.training import accuracy, train_classifier

ort = pytest.importorskip("onnxruntime")

# A user's file: a MobileNetV3-style net (inverted residuals, SE gate on (N, C, 1, 1), hardswish)
# with the activation and gate chosen by name, so SiLU/sigmoid (EfficientNet) and GELU variants
# are the same code.
PLUGIN = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    ACTS = {"hardswish": nn.Hardswish, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
            "hardsigmoid": nn.Hardsigmoid}

    class SE(nn.Module):
        def __init__(self, c, gate):
            super().__init__()
            self.fc1, self.fc2, self.gate = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1), ACTS[gate]()

        def forward(self, x):
            return x * self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))

    class Block(nn.Module):
        def __init__(self, cin, cexp, cout, act, gate, stride=1):
            super().__init__()
            self.exp = nn.Sequential(nn.Conv2d(cin, cexp, 1, bias=False), nn.BatchNorm2d(cexp), ACTS[act]())
            self.dw = nn.Sequential(nn.Conv2d(cexp, cexp, 3, stride, 1, groups=cexp, bias=False), nn.BatchNorm2d(cexp),
                                    ACTS[act]())
            self.se = SE(cexp, gate)
            self.proj = nn.Sequential(nn.Conv2d(cexp, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            y = self.proj(self.se(self.dw(self.exp(x))))
            return x + y if self.res else y

    class MiniV3(nn.Module):
        def __init__(self, act="hardswish", gate="hardsigmoid", classes=10, w=8):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), ACTS[act]())
            self.b1 = Block(w, 2 * w, w, act, gate)
            self.b2 = Block(w, 4 * w, 2 * w, act, gate, 2)
            self.head = nn.Linear(2 * w, classes)

        def forward(self, x):
            x = self.b2(self.b1(self.stem(x)))
            return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def build():
        torch.manual_seed(0)
        return MiniV3().eval()

    def loaders():
        g = torch.Generator().manual_seed(1)
        x = torch.rand(256, 1, 8, 8, generator=g)
        with torch.no_grad():
            y = build()(x).argmax(1)
        return [(x[:128], y[:128])], [(x[128:], y[128:])]
''')

VARIANTS = [("hardswish", "hardsigmoid"), ("silu", "sigmoid"), ("gelu", "tanh")]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    p = tmp_path_factory.mktemp("user") / "minv3.py"
    p.write_text(PLUGIN)
    return p


@pytest.fixture(scope="module")
def net_cls(plugin):
    return plugins.load_model(f"{plugin}:build").__class__


@pytest.fixture(scope="module")
def trained(net_cls, digits):
    """The hardswish/hardsigmoid net trained a few seconds on digits, quantized w8a8-pc."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small depthwise nets train several times faster on one thread than on two
    try:
        model = train_classifier(net_cls(w=12), eq.data.digits_train(batch_size=32), epochs=2, lr=5e-3, log=None)
    finally:
        torch.set_num_threads(threads)
    return model, eq.quantize(model, "w8a8-pc", digits[0], max_calib_samples=256)


@pytest.fixture(scope="module")
def random_nets(net_cls):
    """Random weights, randomized BatchNorm statistics: one quantized net per (activation, gate)."""
    out = {}
    for act, gate in VARIANTS:
        torch.manual_seed(0)
        model = eq.models.randomize_bn(net_cls(act, gate)).eval()
        calib = [torch.rand(64, 1, 8, 8) for _ in range(2)]
        out[act] = (model, eq.quantize(model, "w8a8-pc", calib))
    return out


def test_capture_keeps_every_activation_and_the_se_product(random_nets):
    ops = {act: [i.op for i in q.program.instrs] for act, (_, q) in random_nets.items()}
    for act, gate in VARIANTS:
        fns = {i.attrs["fn"] for i in random_nets[act][1].program.instrs if i.op == "lut"}
        assert fns == {act, gate}, fns
        assert ops[act].count("mul") == 2 and ops[act].count("lut") == 7  # 5 activations + 2 gates


def test_trained_accuracy_close_to_fp32(trained, digits):
    model, q = trained
    fp32 = accuracy(model, digits[1])
    assert fp32 > 85.0  # it learned something in a few seconds
    assert accuracy(q.run, digits[1]) >= fp32 - 1.5


def _instr_vs_sim(program, x, rounding):
    """Every instruction's integer output vs its fake-quant twin fed the same (dequantized) inputs."""
    ctx = KernelContext(rounding, program.tensors)
    env, worst = {}, {}

    def trace(ins, value):
        env[ins.output] = value
        if ins.op in ("quantize", "dequantize"):
            return
        args = [torch.as_tensor((env[i].astype(np.float64) - int(program.tensors[i].qparams.zero_point))
                                * float(program.tensors[i].qparams.scale)) for i in ins.inputs]
        qp = program.tensors[ins.output].qparams
        sim = np.round(SIM[ins.op](ins, args, ctx).numpy() / float(qp.scale)) + int(qp.zero_point)
        worst[ins.op] = max(worst.get(ins.op, 0), int(np.abs(sim - value.astype(np.int64)).max()))

    run_program(program, x, rounding=rounding, trace=trace)
    return worst


@pytest.mark.parametrize("rounding", ["gemmlowp", "onnxruntime"])
@pytest.mark.parametrize("act", [a for a, _ in VARIANTS])
def test_run_matches_simulate(random_nets, act, rounding):
    model, q = random_nets[act]
    torch.manual_seed(1)
    x = torch.rand(64, 1, 8, 8)
    ri = q.run(x, rounding=rounding, return_int=True).int()
    si = q.simulate(x, rounding=rounding, return_int=True).int()
    assert int((ri - si).abs().max()) <= 1
    agree = (q.run(x, rounding=rounding).argmax(1) == q.simulate(x, rounding=rounding).argmax(1)).float().mean()
    assert float(agree) >= 0.99
    worst = _instr_vs_sim(q.program, x.numpy(), rounding)
    # gemmlowp: the table is the fake-quant definition, exactly; onnxruntime: built in float32 as ORT does
    assert worst["lut"] == (0 if rounding == "gemmlowp" else worst["lut"]) <= 1
    assert max(worst.values()) <= 1, worst
    with torch.no_grad():  # and the program still computes the model
        ref = model(x)
    assert float((q.run(x) - ref).abs().max() / ref.abs().max()) < 0.2


def test_low_bit_recipe_tables_and_single_rounding_mul(random_nets):
    """4-bit activations: 16-entry tables; the SE product requantizes with single rounding like every
    sub-8-bit requantization, so the program and its twin agree."""
    model, _ = random_nets["silu"]
    torch.manual_seed(2)
    q = eq.quantize(model, "w4a4", [torch.rand(64, 1, 8, 8)])
    assert {i.arrays["table"].shape[0] for i in q.program.instrs if i.op == "lut"} == {16}
    assert {i.attrs.get("rounding") for i in q.program.instrs if i.op == "mul"} == {"single"}
    x = torch.rand(64, 1, 8, 8)
    assert int((q.run(x, return_int=True).int() - q.simulate(x, return_int=True).int()).abs().max()) <= 1
    assert float((q.run(x).argmax(1) == q.simulate(x).argmax(1)).float().mean()) >= 0.99


# -- the lookup table is the definition, on every code -----------------------------------------------
def _erf_gelu(v):
    return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))


DEFINITIONS = {  # independent float64 definitions (math module, not torch)
    "sigmoid": (lambda v: 1.0 / (1.0 + math.exp(-v)), {}),
    "tanh": (math.tanh, {}),
    "hardsigmoid": (lambda v: min(max(v / 6.0 + 0.5, 0.0), 1.0), {}),
    "hardswish": (lambda v: v * min(max(v + 3.0, 0.0), 6.0) / 6.0, {}),
    "silu": (lambda v: v / (1.0 + math.exp(-v)), {}),
    "gelu": (_erf_gelu, {"approximate": "none"}),
    "leaky_relu": (lambda v: v if v >= 0 else 0.1 * v, {"alpha": 0.1}),
    "elu": (lambda v: v if v > 0 else 1.0 * math.expm1(v), {"alpha": 1.0}),
    "affine": (lambda v: 0.5 * v - 1.25, {"mul": 0.5, "add": -1.25}),
}


def _round_away(v: float) -> int:
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


@pytest.mark.parametrize("fn", sorted(DEFINITIONS))
def test_lut_kernel_is_the_definition_on_all_256_codes(fn):
    f, attrs = DEFINITIONS[fn]
    qx = QParams(np.float32(0.047), np.int32(-5))
    qy = QParams(np.float32(0.0123 if fn not in ("affine", "hardswish", "gelu", "silu", "leaky_relu", "elu") else 0.031),
                 np.int32(-100 if fn in ("sigmoid", "hardsigmoid") else 3))
    codes = np.arange(-128, 128).astype(np.int8)
    attrs = {"fn": fn, **attrs}
    ins = Instr("lut", ["x"], "y", {**attrs, "in_qmin": -128},
                {"table": build_table(fn, attrs, qx, qy), "table_ort": build_table(fn, attrs, qx, qy, "onnxruntime")}, "n")
    tensors = {"x": TensorInfo("int8", (256,), qx), "y": TensorInfo("int8", (256,), qy)}
    got = RUN["lut"](ins, [codes], KernelContext("gemmlowp", tensors))
    want = [min(max(_round_away(f(float(qx.scale) * (c + 5)) / float(qy.scale)) + int(qy.zero_point), -128), 127)
            for c in range(-128, 128)]
    assert got.dtype == np.int8 and got.tolist() == want
    got_ort = RUN["lut"](ins, [codes], KernelContext("onnxruntime", tensors)).astype(int)
    assert np.abs(got_ort - np.array(want)).max() <= 1  # float32 instead of float64, ties to even


# -- ONNX ------------------------------------------------------------------------------------------
def _session(path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_ints(q, path, x):
    y = _session(path).run(None, {q.program.input: x})[0]
    qp = q.program.output_qparams
    return np.round(y.astype(np.float64) / float(qp.scale)).astype(np.int64) + int(qp.zero_point)


@pytest.mark.parametrize("act", [a for a, _ in VARIANTS])
def test_onnx_qdq_parity(random_nets, act, tmp_path):
    """Measured (ORT 1.2x, x86): every output integer equal to the interpreter's onnxruntime mode;
    asserted: within 1 LSB, identical argmax (float32 Tanh/Gelu/Sigmoid may differ by an ulp per CPU)."""
    _, q = random_nets[act]
    x = torch.rand(128, 1, 8, 8).numpy()
    q.export(tmp_path / "m.onnx", format="onnx")
    got = _ort_ints(q, tmp_path / "m.onnx", x)
    ref = q.run(x, rounding="onnxruntime", return_int=True).astype(np.int64)
    assert np.abs(got - ref).max() <= 1
    assert np.mean(got.argmax(1) == ref.argmax(1)) == 1.0


class _Unary(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


UNARY = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "hardsigmoid": nn.functional.hardsigmoid,
    "hardswish": nn.functional.hardswish, "silu": nn.functional.silu, "gelu": nn.functional.gelu,
    "gelu_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"), "mish": nn.functional.mish,
    "leaky_relu": lambda x: nn.functional.leaky_relu(x, 0.1), "elu": nn.functional.elu,
    "scalar_arith": lambda x: (1.0 - x * 0.5) / 4 + 2, "se_mul": lambda x: x * torch.sigmoid(x.mean((2, 3), keepdim=True)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_each_op_on_every_input_code_matches_onnxruntime(name, tmp_path):
    torch.manual_seed(0)
    q = eq.quantize(_Unary(UNARY[name]), "w8a8-pc", [torch.randn(64, 3, 4, 4) * 3])
    qp = q.program.tensors[q.program.instrs[0].output].qparams
    codes = (np.arange(-128, 128) - int(qp.zero_point)) * float(qp.scale)
    x = np.concatenate([np.resize(codes, 4 * 48).reshape(4, 3, 4, 4), torch.randn(60, 3, 4, 4).numpy() * 3]).astype(np.float32)
    q.export(tmp_path / "u.onnx", format="onnx")
    got = _ort_ints(q, tmp_path / "u.onnx", x)
    ref = q.run(x, rounding="onnxruntime", return_int=True).astype(np.int64)
    diff = np.abs(got - ref)
    assert diff.max() <= 1 and np.mean(diff == 0) >= 0.99  # measured: all equal
    assert np.abs(q.run(x, return_int=True).astype(np.int64) - ref).max() <= 1  # the two rounding modes


def test_float_recipes_run_the_new_ops(random_nets, tmp_path):
    model, _ = random_nets["silu"]
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        ref = model(x).numpy()
    q = eq.quantize(model, "fp32", [x])
    assert np.abs(np.asarray(q.run(x.numpy())) - ref).max() <= 1e-4 * np.abs(ref).max()
    q.export(tmp_path / "f.onnx", format="onnx")
    y = _session(tmp_path / "f.onnx").run(None, {q.program.input: x.numpy()})[0]
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    for recipe in ("fp16", "dyn8"):
        assert np.mean(np.asarray(eq.quantize(model, recipe, [x]).run(x.numpy())).argmax(1) == ref.argmax(1)) >= 0.9


def test_tflite_lookup_tables_and_se_product_are_bit_exact(random_nets):
    """Lookup tables export as CAST + GATHER of the program's own table, the SE product as MUL: LiteRT's
    reference kernels give the interpreter's integers (gemmlowp mode) for every activation/gate pair."""
    from edgequant.export.tflite import to_tflite
    from edgequant.export.tflite.run import run_tflite

    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    for act, (_, q) in random_nets.items():
        assert np.array_equal(run_tflite(to_tflite(q), x.numpy()), np.asarray(q.run(x.numpy()))), act


def test_sweep_on_the_user_file(plugin, tmp_path):
    out = tmp_path / "run"
    code = cli.main(["sweep", "--model", f"{plugin}:build", "--data", f"{plugin}:loaders", "--recipes", "w8a8-pc,fp16",
                     "--out", str(out), "--quiet", "--repeats", "1", "--latency-batch", "8"])
    assert code == 0
    import json

    rows = {r["recipe"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert rows["w8a8-pc"]["status"] == "ok" and rows["w8a8-pc"]["accuracy"] >= 90.0, rows["w8a8-pc"]


class _Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x) + 1.0


class _SubTensors(nn.Module):
    def forward(self, x):
        return x - torch.sigmoid(x)


class _ParamMinusX(nn.Module):  # (x * gamma is supported since the shape ops: tests/test_shape_ops.py)
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, 3, 1, 1))

    def forward(self, x):
        return self.gamma - x


@pytest.mark.parametrize("model, match", [
    (_Sin(), r"node 'sin' uses aten.sin.default"),
    (_SubTensors(), r"node 'sub'.*subtraction of two tensors"),
    (_ParamMinusX(), r"node 'sub'.*constant tensor minus an activation"),
])
def test_unsupported_ops_still_name_the_node(model, match):
    with pytest.raises(UnsupportedOpError, match=match):
        eq.quantize(model, "w8a8-pc", [torch.rand(4, 3, 4, 4)])


@pytest.mark.parametrize("act", [a for a, _ in VARIANTS])
def test_qat_quantizes_lookup_tables_and_mul_like_the_program(random_nets, act):
    """QAT on SE/hardswish nets: the trained module's forward is the converted program's arithmetic."""
    model, _ = random_nets[act]
    calib = [torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    qm = eq.qat.prepare(model, "w4a4-qat", calib)
    opt = torch.optim.SGD(qm.parameters(), lr=1e-3)
    qm.train()
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.rand(32, 1, 8, 8, generator=g)
        loss = torch.nn.functional.cross_entropy(qm(x), model(x).argmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    qm.eval()
    q = eq.qat.convert(qm)
    x = torch.rand(256, 1, 8, 8, generator=g)
    with torch.no_grad():
        trained = qm(x).numpy()
    program = np.asarray(q.run(x))
    assert np.mean(trained.argmax(1) == program.argmax(1)) >= 0.99
    np.testing.assert_allclose(trained, program, atol=1e-5)
