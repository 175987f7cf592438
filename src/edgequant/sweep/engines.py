"""Which engine computes a sweep row's accuracy: the fastest one *verified* equal to the interpreter.

The reference interpreter is the spec, but at real size ONNX Runtime runs the exported program many
times faster. A row may take its numbers from ONNX Runtime only after it agrees with the interpreter
on that very row: both run the verification sample (the first ``layer_samples`` evaluation inputs),
the interpreter in the rounding mode the runtime implements (``onnxruntime``: float32 requantize
multiply, round half to even), and the runtime must give the same argmax on every sample and
outputs within ``MAX_LSB`` of the output's quantization step. Otherwise -- or when the runtime is
not faster, or cannot take the recipe -- the interpreter computes the row. The row records which
engine was used, in which rounding, and the verification figures.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import timing

MAX_LSB = 1.0  # largest output difference accepted, in steps of the output's quantization grid
FLOAT_RTOL = 1e-3  # float outputs (fp32/fp16 rows): max |diff| relative to max |reference|
ENGINE_ROUNDING = {"onnxruntime": "onnxruntime"}  # the interpreter rounding each runtime reproduces


@dataclass
class Engine:
    name: str  # "interpreter" or a runtime of timing.FAST
    fn: Callable[[np.ndarray], np.ndarray]  # float inputs (N, ...) -> float outputs
    rounding: str  # the interpreter rounding mode this engine's numbers equal
    note: str
    verification: dict | None = None  # {n, max_lsb, max_abs_diff, argmax_agree, engine_s, interpreter_s}
    rejected: dict[str, str] = field(default_factory=dict)  # runtime -> why it was not used

    def report(self) -> dict:
        return {"eval_engine": self.name, "eval_engine_note": self.note, "eval_rounding": self.rounding,
                "verification": self.verification}


def _flat_argmax(a: np.ndarray) -> np.ndarray:
    return np.argmax(a.reshape(a.shape[0], -1), axis=1)


def compare(ref: np.ndarray, got: np.ndarray, lsb: float | None) -> dict:
    """Verification figures of ``got`` against the interpreter's ``ref`` (same inputs)."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return {"n": int(ref.shape[0]) if ref.ndim else 0, "ok": False, "why": f"output shape {got.shape} != {ref.shape}"}
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    agree = bool(np.array_equal(_flat_argmax(ref), _flat_argmax(got))) if ref.size else True
    if lsb:
        max_lsb = diff / lsb
        ok = agree and max_lsb <= MAX_LSB + 1e-3  # float32 outputs carry ~1e-7 relative noise of their own
        bound = f"<= {MAX_LSB:g} LSB"
    else:  # float output: no grid, a relative bound
        max_lsb = None
        ok = agree and diff <= FLOAT_RTOL * max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-12)
        bound = f"<= {FLOAT_RTOL:g} x max|output|"
    return {"n": int(ref.shape[0]), "max_lsb": max_lsb, "max_abs_diff": diff, "argmax_agree": agree, "ok": ok,
            "bound": bound}


def output_lsb(q) -> float | None:
    """The output's quantization step (largest channel's), None for a float output."""
    oqp = q.program.output_qparams
    return float(np.max(oqp.scale)) if oqp is not None else None


def select(q, x: np.ndarray, backends: tuple[str, ...] | list[str], threads: int | None, rounding: str,
           interpreter_out: dict[str, tuple[np.ndarray, float]] | None = None) -> Engine:
    """The engine for row ``q``: the first of ``backends`` verified on ``x`` and faster than the
    interpreter, else the interpreter in ``rounding``.

    ``interpreter_out``: {rounding: (output on x, seconds)} already computed (reused, and filled).
    A float program (fp32/fp16: nothing to requantize) gives the same output in every rounding, so
    one interpreter run serves all.
    """
    cache = {} if interpreter_out is None else interpreter_out
    if getattr(q.recipe, "mode", None) in ("float", "fp16") and cache:
        first = next(iter(cache.values()))
        for r in ENGINE_ROUNDING.values():
            cache.setdefault(r, first)
    rejected: dict[str, str] = {}

    def reference(r: str) -> tuple[np.ndarray, float]:
        if r not in cache:
            t = time.perf_counter()
            out = np.asarray(q.run(x, rounding=r), np.float32)
            cache[r] = (out, time.perf_counter() - t)
        return cache[r]

    for b in backends:
        r = ENGINE_ROUNDING.get(b)
        if r is None:
            rejected[b] = "no known interpreter rounding to verify it against"
            continue
        try:
            fn = timing.fast_runner(q, b, threads)
            fn(x[:1])  # warm-up (session build, first-run allocations), not part of the timing
            t = time.perf_counter()
            got = np.asarray(fn(x), np.float32)
            t_engine = time.perf_counter() - t
        except Exception as e:  # a runtime that cannot take this recipe falls back, with the reason
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            rejected[b] = f"{type(e).__name__}: {msg}"[:200]
            continue
        ref, t_interp = reference(r)
        v = compare(ref, got, output_lsb(q))
        v.update(engine_s=round(t_engine, 4), interpreter_s=round(t_interp, 4))
        if not v["ok"]:
            why = v.get("why") or (f"argmax agree {v['argmax_agree']}, max diff "
                                   + (f"{v['max_lsb']:.3g} LSB" if v["max_lsb"] is not None else f"{v['max_abs_diff']:.3g}"))
            rejected[b] = f"not verified on {v['n']} samples ({why}; needs identical argmax and {v['bound']})"
            continue
        if t_engine >= t_interp:
            rejected[b] = f"verified but not faster ({t_engine:.3f} s vs interpreter {t_interp:.3f} s on {v['n']} samples)"
            continue
        v.pop("ok")
        note = (f"{b} verified against the interpreter ({r} rounding) on {v['n']} samples: identical argmax, "
                + (f"max {v['max_lsb']:.3g} LSB" if v["max_lsb"] is not None else f"max |diff| {v['max_abs_diff']:.3g}"))
        return Engine(b, fn, r, note, v, rejected)
    note = "the reference interpreter" + (
        ": " + "; ".join(f"{k}: {w}" for k, w in rejected.items()) if rejected else "")
    return Engine("interpreter", lambda xb: q.run(xb, rounding=rounding), rounding, note[:400], None, rejected)
