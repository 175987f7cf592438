"""Sigmoid and tanh of the recurrent gates: 513-entry int16 tables with linear interpolation.

The gates of the integer LSTM/GRU (``kernels.rnn``) are int16 on TFLite's fixed grids: inputs Q3.12
(scale 2^-12, [-8, 8)), outputs Q0.15 (scale 2^-15). A table with one entry per input code would
hold 65536 entries; TFLite's int16 ``LUTPopulate``/``LUTLookup`` instead sample the function at 513
evenly spaced inputs (every 128th code) and interpolate linearly between them in integers. The
tables are a fixed part of the program's arithmetic (the same for every model), so they are built
here once and not stored in artifacts. ``table_error`` measures what the interpolation costs against
the exact function on all 65536 inputs (bench/lstm.py reports it; a test bounds it).
"""
from __future__ import annotations

import numpy as np

IN_FRAC = 12  # gate pre-activations: Q3.12
OUT_FRAC = 15  # gate outputs: Q0.15
INT16_MIN, INT16_MAX = -32768, 32767
FUNCTIONS = {"sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "tanh": np.tanh}


def build_lut(fn: str) -> np.ndarray:
    """int16 (513,): ``fn`` at inputs ``(-32768 + 128 k) * 2^-12`` on the Q0.15 grid, rounded half away."""
    x = (np.arange(513, dtype=np.float64) * 128 - 32768) * 2.0**-IN_FRAC
    v = FUNCTIONS[fn](x) * 2.0**OUT_FRAC
    r = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return np.clip(r, INT16_MIN, INT16_MAX).astype(np.int16)


LUTS = {fn: build_lut(fn) for fn in FUNCTIONS}


def lut_lookup(v: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """TFLite ``LUTLookup`` for int16: base entry ``256 + (v >> 7)`` plus the slope to the next entry
    times the low 7 bits, rounded (``(slope * offset + 64) >> 7``). ``v``: int16 values (any int dtype)."""
    v = np.asarray(v, np.int64)
    idx = 256 + (v >> 7)
    off = v & 0x7F
    base = lut[idx].astype(np.int64)
    slope = lut[idx + 1].astype(np.int64) - base
    return base + ((slope * off + 64) >> 7)


def table_error(fn: str) -> dict:
    """Error of the interpolated table against the exact function over every int16 input, in Q0.15
    LSBs (max and mean of |table - exact/2^-15|)."""
    v = np.arange(INT16_MIN, INT16_MAX + 1, dtype=np.int64)
    exact = FUNCTIONS[fn](v * 2.0**-IN_FRAC) * 2.0**OUT_FRAC
    err = np.abs(lut_lookup(v, LUTS[fn]) - exact)
    return {"fn": fn, "entries": int(LUTS[fn].size), "max_lsb": float(err.max()), "mean_lsb": float(err.mean()),
            "max_abs": float(err.max() * 2.0**-OUT_FRAC)}
