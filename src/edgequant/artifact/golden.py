"""The golden check: a seeded input run at save time and again at load (see the package docstring)."""
from __future__ import annotations

import numpy as np

from ..errors import ArtifactError
from ..program import Instr, Program
from ..qmath import ROUNDING_MODES
from .files import MANIFEST, PROGRAM, TENSORS, _Fail, _need, _sha256

GOLDEN_SEED = 0
GOLDEN_BATCH = 2
GOLDEN_RTOL = 1e-4  # float (``*_f``) programs only


def _golden_input(program: Program) -> np.ndarray:
    """Seeded random input: uniform over the input quantizer's real range, else standard normal."""
    rng = np.random.default_rng(GOLDEN_SEED)
    shape = (GOLDEN_BATCH,) + tuple(program.input_shape[1:])
    first = next((i for i in program.instrs if program.input in i.inputs), None)
    qp = program.tensors[first.output].qparams if first is not None and first.op == "quantize" else None
    if qp is not None and qp.axis is None:
        s, z = float(qp.scale), int(qp.zero_point)
        return rng.uniform(s * (qp.qmin - z), s * (qp.qmax - z), shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _exact(program: Program) -> bool:
    """Bit-exact golden comparison unless float kernels (``*_f``, torch) may round per CPU."""
    return not any(i.op.endswith("_f") for i in program.instrs)


def _digest(y: np.ndarray) -> str:
    y = np.ascontiguousarray(y)
    return _sha256(f"{y.dtype.str}{list(y.shape)}".encode() + y.tobytes())[:16]


def _golden_run(program: Program, x: np.ndarray, check=None) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Outputs and per-instruction digests of ``program`` on ``x`` in every rounding mode."""
    from .. import interpreter

    outs, digests = {}, {}
    for mode in ROUNDING_MODES:
        seen: list[str] = []

        def trace(ins: Instr, y: np.ndarray) -> None:
            if check is not None:
                check(ins, y)
            seen.append(_digest(y))

        outs[mode] = np.asarray(interpreter.run(program, x, rounding=mode, trace=trace, chunk=x.shape[0]))  # one digest per instruction
        digests[mode] = seen
    return outs, digests


def _golden_check(program: Program, manifest: dict, tensors: dict[str, np.ndarray], fail: _Fail) -> None:
    """Rerun the stored golden input; every tensor's shape/dtype and the outputs must match."""
    g = manifest.get("golden")
    _need(isinstance(g, dict) and isinstance(g.get("outputs"), dict) and g.get("input") in tensors, fail, "golden",
          "missing or malformed", file=MANIFEST)
    _need(g.get("compare") == ("exact" if _exact(program) else "rtol"), fail, "golden.compare", "does not match the program", file=MANIFEST)
    _need(set(g["outputs"]) == set(ROUNDING_MODES) and all(v in tensors for v in g["outputs"].values()), fail,
          "golden.outputs", f"must name stored outputs for {list(ROUNDING_MODES)}", file=MANIFEST)
    x = tensors[g["input"]]
    _need(x.dtype == np.float32 and x.shape[1:] == tuple(program.input_shape[1:]) and x.shape[0] >= 1, fail, g["input"],
          "golden input does not match the program's input shape", file=TENSORS)

    def trace(ins: Instr, y: np.ndarray) -> None:
        info = program.tensors[ins.output]
        if y.dtype != np.dtype(info.dtype) or tuple(y.shape[1:]) != tuple(info.shape[1:]):
            raise fail(PROGRAM, f"tensors.{ins.output}", f"instruction {ins.op} produces {y.dtype}{list(y.shape)}, "
                       f"the program declares {info.dtype}{list(info.shape)}")

    exact = g["compare"] == "exact"
    digests = g.get("digests")
    _need(not exact or (isinstance(digests, dict) and set(digests) == set(ROUNDING_MODES)
                        and all(isinstance(v, list) and len(v) == len(program.instrs) for v in digests.values())),
          fail, "golden.digests", "need one digest per instruction and rounding mode", file=MANIFEST)
    try:
        got, got_digests = _golden_run(program, x, trace)
    except ArtifactError:
        raise
    except Exception as e:  # a consistent-looking program that cannot run is a corrupt artifact
        raise fail(PROGRAM, "", f"the program fails on its golden input: {type(e).__name__}: {e}") from e
    for mode in ROUNDING_MODES if exact else ():
        bad = next((k for k, (a, b) in enumerate(zip(digests[mode], got_digests[mode])) if a != b), None)
        if bad is not None:
            ins = program.instrs[bad]
            raise ArtifactError(f"artifact {fail.root}: instruction {bad} ({ins.op} from node '{ins.node}') computes "
                                f"differently on the golden input ({mode} rounding) than when it was saved: the files were "
                                "edited consistently, or this edgequant's kernels differ from the saving one; re-save the model")
    for mode, name in g["outputs"].items():
        want, y = tensors[name], got[mode]
        same = want.shape == y.shape and want.dtype == y.dtype
        if same and g["compare"] == "exact":
            same = bool(np.array_equal(want, y, equal_nan=True))
        elif same:
            tol = GOLDEN_RTOL * max(float(np.max(np.abs(want), initial=0.0)), 1e-6)
            same = bool(np.all(np.abs(want.astype(np.float64) - y) <= tol))
        if not same:
            raise ArtifactError(f"artifact {fail.root}: the program's output on its golden input ({mode} rounding) differs "
                                "from the one stored at save time: the files were edited consistently, or this edgequant "
                                "computes differently from the one that saved it; re-save the model with this version")
