"""Registers the low-bit weight methods and weight corrections with ``weight_quant``."""
from . import binary, bias_correction, bit_alloc, clip  # noqa: F401
