"""Recurrent nets (issue 17): nn.LSTM / nn.GRU captured, quantized (dyn8, w8a8-pc, w4a8), run, simulated,
exported to ONNX, and refused clearly where unsupported."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgequant as eq
from edgequant import interpreter
from edgequant.capture import capture
from edgequant.errors import UnsupportedOpError
from edgequant.graph_exec import GraphModule
from edgequant.kernels.rnn_lut import LUTS, lut_lookup, table_error

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class Last(nn.Module):
    """Linear on the last step of the output sequence (batch_first True or False)."""

    def __init__(self, cell="lstm", feat=6, hid=12, **kw) -> None:
        super().__init__()
        self.bf = kw.setdefault("batch_first", True)
        self.rnn = CELLS[cell](feat, hid, **kw)
        self.fc = nn.Linear(hid * (2 if kw.get("bidirectional") else 1), 5)

    def forward(self, x):
        if not self.bf:
            x = x.transpose(0, 1)  # (T, N, F)
        y, _ = self.rnn(x)
        return self.fc(y[:, -1] if self.bf else y[-1])


class Final(nn.Module):
    """Linear on h_n (both directions of the last layer), optionally on c_n, with learned initial states."""

    def __init__(self, cell="lstm", layers=2, bidirectional=True, use_c=False, learned_init=False) -> None:
        super().__init__()
        d = 2 if bidirectional else 1
        self.cell, self.use_c, self.d = cell, use_c, d
        self.rnn = CELLS[cell](6, 12, layers, batch_first=True, bidirectional=bidirectional)
        self.h0 = nn.Parameter(torch.randn(layers * d, 1, 12) * 0.5) if learned_init else None
        self.c0 = nn.Parameter(torch.randn(layers * d, 1, 12) * 0.5) if learned_init and cell == "lstm" else None
        self.fc = nn.Linear(12 * d, 5)

    def forward(self, x):
        hx = None
        if self.h0 is not None:
            h0 = self.h0.expand(-1, x.shape[0], -1).contiguous()
            hx = (h0, self.c0.expand(-1, x.shape[0], -1).contiguous()) if self.cell == "lstm" else h0
        _, st = self.rnn(x, hx)
        s = (st[1] if self.use_c else st[0]) if self.cell == "lstm" else st
        last = s.transpose(0, 1).reshape(x.shape[0], -1)[:, -12 * self.d:]  # (N, L*D*H) -> the last layer's
        return self.fc(last)


def _x(n=64, t=7, f=6, seed=0):
    return torch.randn(n, t, f, generator=torch.Generator().manual_seed(seed))


def _model(m, seed=0):
    torch.manual_seed(seed)
    return m.eval()


CAPTURE_CASES = {
    "lstm": lambda: Last("lstm"),
    "gru": lambda: Last("gru"),
    "lstm-bidir-2layers": lambda: Last("lstm", num_layers=2, bidirectional=True),
    "gru-batch-second": lambda: Last("gru", batch_first=False, num_layers=2),
    "lstm-batch-second-bidir": lambda: Last("lstm", batch_first=False, bidirectional=True),
    "lstm-h_n-learned-h0c0": lambda: Final("lstm", learned_init=True),
    "lstm-c_n": lambda: Final("lstm", use_c=True, layers=1, bidirectional=False),
    "gru-h_n-learned-h0": lambda: Final("gru", learned_init=True, layers=1),
}


@pytest.mark.parametrize("case", sorted(CAPTURE_CASES))
def test_capture_variants_compute_the_module(case):
    m = _model(CAPTURE_CASES[case]())
    x = _x()
    g = capture(m, x)
    assert sum(n.op == "rnn" for n in g.nodes) >= 1
    with torch.no_grad():
        assert torch.allclose(GraphModule(g)(x), m(x), atol=1e-5)


@pytest.mark.parametrize("case", ["lstm", "gru", "lstm-bidir-2layers", "lstm-h_n-learned-h0c0", "lstm-c_n"])
def test_w8a8_run_simulate_and_onnxruntime_agree(case):
    m = _model(CAPTURE_CASES[case]())
    x = _x(128)
    q = eq.quantize(m, "w8a8-pc", [x])
    xn = x.numpy()
    ref = m(x).detach().numpy()
    y, s = q.run(xn), np.asarray(q.simulate(xn))
    assert (y.argmax(1) == s.argmax(1)).mean() >= 0.97
    assert np.abs(y - ref).max() < 0.25 * np.abs(ref).max()
    # ONNX Runtime runs the same integers as the interpreter's onnxruntime mode, bit for bit
    from edgequant.backends import ort_session

    yo = ort_session(q).run(None, {q.program.input: xn})[0]
    np.testing.assert_array_equal(yo, q.run(xn, rounding="onnxruntime"))


@pytest.mark.parametrize("recipe", ["fp32", "fp16", "dyn8", "w4a8"])
def test_other_recipes_run_and_export(recipe):
    m = _model(Last("gru" if recipe == "dyn8" else "lstm", bidirectional=recipe == "w4a8"))
    x = _x(96)
    q = eq.quantize(m, recipe, [x])
    xn = x.numpy()
    y = q.run(xn)
    ref = m(x).detach().numpy()
    tol = {"fp32": 1e-5, "fp16": 1e-2, "dyn8": 0.05, "w4a8": 0.5}[recipe]
    assert np.abs(y - ref).max() < tol * max(1.0, np.abs(ref).max())
    from edgequant.backends import ort_session

    yo = ort_session(q).run(None, {q.program.input: xn})[0]
    assert (yo.argmax(1) == q.run(xn, rounding="onnxruntime").argmax(1)).mean() >= 0.99
    np.testing.assert_allclose(yo, q.run(xn, rounding="onnxruntime"), atol=1e-4 if recipe != "w4a8" else 0)


def test_w4a8_weights_are_packed_smaller():
    m = _model(Last("lstm", hid=32))
    x = _x(32)
    s8, s4 = eq.quantize(m, "w8a8-pc", [x]).size_bytes, eq.quantize(m, "w4a8", [x]).size_bytes
    assert s4 < 0.65 * s8


def test_cell_state_is_16_bit_on_a_power_of_two_grid():
    """An LSTM whose cell grows by ~1 per step (i, f, g saturated): c reaches ~T-1 = 7, far outside
    the int8 hidden grid (|h| < 1); the int16 cell on 2^-12 carries it (c_n read out exactly)."""
    m = _model(Final("lstm", use_c=True, layers=1, bidirectional=False))
    with torch.no_grad():
        h = 12
        m.rnn.bias_ih_l0.zero_()
        m.rnn.bias_hh_l0.zero_()
        m.rnn.bias_ih_l0[: 3 * h] = 9.0  # i, f, g -> 1
        m.fc.weight.copy_(torch.eye(5, 12))
        m.fc.bias.zero_()
    x = _x(32, t=8) * 0.01
    q = eq.quantize(m, "w8a8-pc", [x])
    rnn = [i for i in q.program.instrs if i.op == "rnn"]
    assert {i.attrs["cell_frac"] for i in rnn} == {12}  # T = 8: |c| < 8 -> Q3.12
    assert all(i.arrays["s0"].dtype == np.int16 for i in rnn)
    ref = m(x).detach().numpy()
    assert ref.max() > 7.0
    np.testing.assert_allclose(q.run(x.numpy()), ref, atol=0.05)


def test_cell_frac_covers_the_sequence_length():
    from edgequant.lower.rnn import cell_frac
    from edgequant.ir import Node

    def node(t, c0=0.0):
        return Node("r", "rnn", [], {}, {"c0": np.full((1, 4), c0, np.float32)}, (2, t, 4))

    assert cell_frac(node(8)) == 12 and cell_frac(node(50)) == 9 and cell_frac(node(1)) == 15
    assert cell_frac(node(8, c0=3.0)) == 11


def test_gate_tables_error_is_bounded_and_exact_at_the_samples():
    sig, tanh = table_error("sigmoid"), table_error("tanh")
    assert sig["entries"] == tanh["entries"] == 513
    assert sig["max_lsb"] < 1.5 and tanh["max_lsb"] < 4.0  # of Q0.15 (measured 1.26 and 3.80)
    codes = np.arange(-32768, 32768, 128)
    np.testing.assert_array_equal(lut_lookup(codes, LUTS["sigmoid"]), LUTS["sigmoid"][:512])


def test_fast_requantization_equals_the_gemmlowp_spec():
    from edgequant import qmath
    from edgequant.kernels.rnn import _Requant

    rng = np.random.default_rng(0)
    real = np.concatenate([rng.uniform(1e-4, 0.999, 60), [0.5, 2.0**-20, 0.25]])
    rq = _Requant(real, real.astype(np.float32), "gemmlowp")
    assert rq.fast
    acc = rng.integers(-(1 << 22) + 1, 1 << 22, (500, real.size))
    acc[:4] = [[1 << 21], [-(1 << 21)], [3], [-3]]  # exact halves after the shifts
    m0, sh = qmath.quantize_multiplier(real)
    want = qmath.requantize(acc, m0=m0, shift=sh, real_multiplier=real, zero_point=3, qmin=-32768, qmax=32767)
    np.testing.assert_array_equal(rq(acc, 3, -32768, 32767), want)


def test_artifact_round_trip(tmp_path):
    m = _model(Last("gru", num_layers=2))
    x = _x(32)
    q = eq.quantize(m, "w8a8-pc", [x])
    q.save(tmp_path / "m.edgequant")
    q2 = eq.load(tmp_path / "m.edgequant")
    np.testing.assert_array_equal(q2.run(x.numpy()), q.run(x.numpy()))


def test_lstm_artifact_round_trip_and_the_earlier_arithmetic(tmp_path):
    """An LSTM saved and loaded keeps TFLite's arithmetic; an instruction without ``tflite`` (artifacts
    saved before it) still runs the interpolated tables, and ONNX Runtime still reproduces it."""
    from edgequant.backends import ort_session

    q = eq.quantize(_model(Last("lstm", bidirectional=True)), "w8a8-pc", [_x(64)])
    x = _x(64, seed=1).numpy()
    y = q.run(x)
    q.save(tmp_path / "m.edgequant")
    np.testing.assert_array_equal(eq.load(tmp_path / "m.edgequant").run(x), y)
    for ins in q.program.instrs:
        if ins.op == "rnn":
            assert ins.attrs.pop("tflite") is True
    y_lut = q.run(x)
    assert not np.array_equal(y_lut, y) and (y_lut.argmax(1) == y.argmax(1)).mean() >= 0.97
    np.testing.assert_array_equal(ort_session(q).run(None, {q.program.input: x})[0], q.run(x, rounding="onnxruntime"))


# -- refusals --------------------------------------------------------------------------------------
class Plain(nn.Module):
    def __init__(self, rnn, head=None):
        super().__init__()
        self.rnn, self.head = rnn, head

    def forward(self, x):
        y, st = self.rnn(x)
        return self.head(y, st) if self.head else y[:, -1]


def test_refusals_name_the_module_and_the_fix():
    x = _x(4)
    cases = [
        (Plain(nn.RNN(6, 8, batch_first=True)), "nn.RNN"),
        (Plain(nn.LSTM(6, 8, batch_first=True, proj_size=4)), "proj_size"),
        (Plain(nn.LSTM(6, 8, batch_first=True), lambda y, st: st[0].sum(0)), "h_n"),
        (Plain(nn.GRU(6, 8, batch_first=False), None), "batch_first=False"),
    ]
    for m, words in cases:
        with pytest.raises(UnsupportedOpError, match=words) as e:
            eq.quantize(m.eval(), "w8a8-pc", [x])
        assert "rnn" in str(e.value) or "module" in str(e.value)


class FromInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.init = nn.Linear(6, 8)
        self.rnn = nn.GRU(6, 8, batch_first=True)

    def forward(self, x):
        y, _ = self.rnn(x, self.init(x[:, 0]).unsqueeze(0))
        return y[:, -1]


def test_reconstruction_recipes_refuse_recurrent_layers():
    with pytest.raises(UnsupportedOpError, match=r"reconstruction does not support node .*\[rnn\]"):
        eq.quantize(_model(Last("gru")), "w4a8-gptq", [_x(16)])


def test_initial_state_from_the_input_is_refused():
    with pytest.raises(UnsupportedOpError, match="initial hidden state h0 is computed from the input"):
        eq.quantize(FromInput().eval(), "w8a8-pc", [_x(4)])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_qat_trains_and_converts_to_the_same_program(cell):
    m = _model(Last(cell, bidirectional=cell == "gru"))
    x, y = _x(64), torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(3))
    qm = eq.qat.prepare(m, "w4a4-qat", [x])
    opt = torch.optim.Adam(qm.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(qm(x), y)
        loss.backward()
        opt.step()
    assert qm.rnns[next(iter(qm.rnns))].w_ih.grad is not None
    qm.eval()
    with torch.no_grad():
        y_qat = qm(x).numpy()
    q = eq.qat.convert(qm)
    np.testing.assert_allclose(q.run(x.numpy()), y_qat, atol=1e-6)  # the QAT forward is the program's value


def test_hidden_state_stays_in_its_activation_width():
    m = _model(Last("lstm"))
    x = _x(32)
    q = eq.quantize(m, "w4a4", [x])
    seen = []
    interpreter.run(q.program, x.numpy(), trace=lambda ins, v: seen.append((ins, v)) if ins.op == "rnn" else None)
    (ins, v), = seen
    qp = q.program.tensors[ins.output].qparams
    assert qp.bits == 4 and v.min() >= qp.qmin and v.max() <= qp.qmax


def test_users_model_is_untouched():
    m = _model(Last("lstm"))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    eq.quantize(m, "w8a8-pc", [_x(8)])
    assert isinstance(m.rnn, nn.LSTM)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


# -- shipped trained models on real data -------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits_lstm", "digits_gru"])
def test_shipped_recurrent_digits_models(name):
    from edgequant.training import accuracy

    calib, test = eq.data.digits()
    m = getattr(eq.models, name)(pretrained=True)
    fp32 = accuracy(lambda x: m(x), test)
    q = eq.quantize(m, "w8a8-pc", calib)
    int8 = accuracy(lambda x: torch.from_numpy(q.run(x.numpy())), test)
    assert fp32 > 95.0
    assert int8 >= fp32 - 1.0
