"""TFLite export of the integer LSTM: UNIDIRECTIONAL_SEQUENCE_LSTM in LiteRT's reference kernels ==
the interpreter, bit for bit; GRUs and what the operator cannot compute are refused by name."""
import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("tflite", reason="the 'tflite' schema package is not installed: pip install 'edgequant[tflite]'")
pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert (LiteRT) is not installed: pip install 'edgequant[tflite]'")

import edgequant as eq  # noqa: E402
from edgequant import interpreter  # noqa: E402
from edgequant.errors import ExportError  # noqa: E402
from edgequant.export.tflite import to_tflite  # noqa: E402
from edgequant.export.tflite.run import run_tflite  # noqa: E402
from edgequant.kernels import fixedpoint16  # noqa: E402

from test_rnn import Final, Last, _model, _x  # noqa: E402


class Sequence(nn.Module):
    """Linear on every step of the output sequence, flattened."""

    def __init__(self, **kw) -> None:
        super().__init__()
        self.rnn = nn.LSTM(6, 12, batch_first=True, **kw)
        self.fc = nn.Linear(12 * (2 if kw.get("bidirectional") else 1), 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y).flatten(1)


CASES = {
    "last-step": lambda: Last("lstm"),
    "batch-second-bidir": lambda: Last("lstm", batch_first=False, bidirectional=True),
    "2-layers-bidir": lambda: Last("lstm", num_layers=2, bidirectional=True),
    "h_n-2-layers-bidir": lambda: Final("lstm"),
    "full-sequence": lambda: Sequence(),
    "full-sequence-bidir": lambda: Sequence(bidirectional=True),
}


def _exact(q, x: np.ndarray, batch_size: int = 1) -> np.ndarray:
    ref = interpreter.run(q.program, x, rounding="gemmlowp")
    y = run_tflite(to_tflite(q, batch_size=batch_size), x, kernels="reference")
    assert y.shape == ref.shape
    return y, ref


@pytest.mark.parametrize("case", sorted(CASES))
def test_lstm_bit_exact_in_litert_reference_kernels(case):
    """Random-weight LSTMs (T 7, hidden 12), per-tensor int8: every output equal, on calibration-like
    inputs and on inputs 3x wider (saturating the input quantizer and driving the gates to the
    tables' ends)."""
    m = _model(CASES[case]())
    q = eq.quantize(m, "w8a8", [_x(64)])
    for x in (_x(40, seed=1).numpy(), 3 * _x(40, seed=2).numpy()):
        y, ref = _exact(q, x, batch_size=16)  # 40 = 16 + 16 + 8 (padded): state reset per chunk
        assert np.array_equal(y, ref)


@pytest.mark.parametrize("t_len, bits", [(20, 5), (40, 6), (100, 6)])
def test_long_sequences_bit_exact(t_len, bits):
    """Longer sequences put the cell state on coarser grids (tanh(c) with 5 and 6 integer bits; at
    T 100 the grid stops at TFLite's 6 bits) and stay bit-exact; inputs 4x wider than calibration."""
    m = _model(Last("lstm", bidirectional=True))
    q = eq.quantize(m, "w8a8", [_x(32, t=t_len)])
    assert {15 - i.attrs["cell_frac"] for i in q.program.instrs if i.op == "rnn"} == {bits}
    y, ref = _exact(q, 4 * _x(24, t=t_len, seed=3).numpy(), batch_size=24)
    assert np.array_equal(y, ref)


def test_file_holds_one_integer_lstm_per_layer_direction():
    from tflite.BuiltinOperator import BuiltinOperator
    from tflite.Model import Model

    q = eq.quantize(_model(Last("lstm", num_layers=2, bidirectional=True)), "w8a8", [_x(16)])
    model = Model.GetRootAsModel(to_tflite(q), 0)
    sg = model.Subgraphs(0)
    codes = [model.OperatorCodes(sg.Operators(i).OpcodeIndex()).BuiltinCode() for i in range(sg.OperatorsLength())]
    lstm = [i for i, c in enumerate(codes) if c == BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM]
    assert len(lstm) == 4 and codes.count(BuiltinOperator.REVERSE_V2) == 4  # 2 reverse directions, in and out
    op = sg.Operators(lstm[0])
    assert op.IntermediatesLength() == 5
    cell = sg.Tensors(op.Inputs(19))
    assert cell.IsVariable() and cell.Type() == 7 and cell.Quantization().Scale(0) == 2.0**-12  # int16, Q3.12 at T 7


def test_digits_lstm_bit_exact(digits):
    """The shipped LSTM (8 steps of 8 features) on the real digits test split."""
    calib, test = digits
    m = eq.models.digits_lstm(pretrained=True)
    q = eq.quantize(m, "w8a8", calib)
    x = torch.cat([xb for xb, _ in test]).numpy()
    y, ref = _exact(q, x, batch_size=32)
    assert np.array_equal(y, ref)


def test_gemmlowp_gate_functions_match_the_exact_ones():
    """gemmlowp's int16 sigmoid/tanh (the arithmetic of TFLite's LSTM) within a few Q0.15 LSB of the
    exact function at every input (measured max 6.39 for sigmoid, 12.05 for tanh), and exact where the
    result is known."""
    v = fixedpoint16.ALL
    sig = np.abs(fixedpoint16.table("sigmoid") - 32768 / (1 + np.exp(-v * 2.0**-12)))
    assert sig.max() < 7
    for bits in range(7):
        assert np.abs(fixedpoint16.table("tanh", bits) - 32768 * np.tanh(v * 2.0**(bits - 15))).max() < 12.5
    assert fixedpoint16.lookup(0, "sigmoid") == 16384 and fixedpoint16.lookup(0, "tanh") == 0
    with pytest.raises(ValueError):
        fixedpoint16.table("tanh", 7)


def test_refusals_name_the_layer_and_the_way_out():
    x = [_x(16)]
    gru = eq.quantize(_model(Last("gru")), "w8a8", x)
    with pytest.raises(ExportError, match=r"layer 'rnn.*' is a GRU: TFLite has no GRU operator.*ONNX"):
        to_tflite(gru)
    with pytest.raises(ExportError, match="GRU"):
        to_tflite(eq.quantize(_model(Last("gru")), "fp32", x))
    per_channel = eq.quantize(_model(Last("lstm")), "w8a8-pc", x)
    with pytest.raises(ExportError, match="per output channel.*one scale per gate matrix.*'w8a8'"):
        to_tflite(per_channel)
    h0 = eq.quantize(_model(Final("lstm", learned_init=True, layers=1, bidirectional=False)), "w8a8", x)
    with pytest.raises(ExportError, match="initial states h0/c0.*reset.*zero"):
        to_tflite(h0)
    c_n = eq.quantize(_model(Final("lstm", use_c=True, layers=1, bidirectional=False)), "w8a8", x)
    with pytest.raises(ExportError, match=r"cell state \(c_n\)"):
        to_tflite(c_n)
    with pytest.raises(ExportError, match="float/dynamic LSTM"):
        to_tflite(eq.quantize(_model(Last("lstm")), "fp32", x))
    earlier = eq.quantize(_model(Last("lstm")), "w8a8", x)
    next(i for i in earlier.program.instrs if i.op == "rnn").attrs.pop("tflite")
    with pytest.raises(ExportError, match="earlier gate tables.*quantize the model again"):
        to_tflite(earlier)
