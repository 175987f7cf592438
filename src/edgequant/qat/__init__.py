"""Quantization-aware training: fine-tune a model through fake-quant, convert to the integer program.

    qat_model = eq.qat.prepare(model, "w4a4-qat", calib)   # an ordinary nn.Module
    ...                                                     # your usual training loop
    q = eq.qat.convert(qat_model)                           # same QuantizedModel as eq.quantize

or, without a loop of your own: ``q = eq.qat.finetune(model, "w4a4-qat", train, calib, epochs=5)``.
"""
from __future__ import annotations

from . import presets  # noqa: F401  (registers the QAT recipes)
from .config import QATConfig
from .convert import convert
from .finetune import finetune, train_qat
from .fake_quant import ActFakeQuant, WeightFakeQuant
from .modules import QATModel
from .prepare import prepare

__all__ = ["prepare", "convert", "finetune", "train_qat", "QATModel", "QATConfig", "ActFakeQuant", "WeightFakeQuant"]
