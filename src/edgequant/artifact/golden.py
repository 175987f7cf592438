"""The golden check: a seeded input run at save time and again at load (see the package docstring)."""
from __future__ import annotations

import numpy as np

from ..errors import ArtifactError
from ..feeds import INT_DTYPE
from ..program import Instr, Program
from ..qmath import ROUNDING_MODES
from .files import MANIFEST, PROGRAM, TENSORS, _Fail, _need, _sha256

GOLDEN_SEED = 0
GOLDEN_BATCH = 2
GOLDEN_RTOL = 1e-4  # float (``*_f``) programs only


def _golden_input(program: Program) -> dict[str, np.ndarray]:
    """Seeded random input per program input. Float: uniform over the input quantizer's real range,
    else standard normal. int64 token ids (read only by embedding lookups): uniform over the smallest
    table's rows. Other int64 inputs are padding masks: ones, then zeros after a random length >= 1."""
    rng = np.random.default_rng(GOLDEN_SEED)
    feeds = {}
    for name in program.inputs:
        shape = (GOLDEN_BATCH,) + tuple(program.tensors[name].shape[1:])
        users = [i for i in program.instrs if name in i.inputs]
        if program.tensors[name].dtype == INT_DTYPE:
            if users and all(i.op == "embedding" for i in users):
                rows = min(int(i.arrays["table"].shape[0]) for i in users)
                feeds[name] = rng.integers(0, rows, shape, dtype=np.int64)
            else:
                n = rng.integers(1, shape[-1] + 1, shape[:-1])
                feeds[name] = (np.arange(shape[-1]) < n[..., None]).astype(np.int64)
            continue
        first = users[0] if users else None
        qp = program.tensors[first.output].qparams if first is not None and first.op == "quantize" else None
        if qp is not None and qp.axis is None:
            s, z = float(qp.scale), int(qp.zero_point)
            feeds[name] = rng.uniform(s * (qp.qmin - z), s * (qp.qmax - z), shape).astype(np.float32)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _exact(program: Program) -> bool:
    """Bit-exact golden comparison unless float kernels (``*_f``, torch) may round per CPU."""
    return not any(i.op.endswith("_f") for i in program.instrs)


def _digest(y: np.ndarray) -> str:
    y = np.ascontiguousarray(y)
    return _sha256(f"{y.dtype.str}{list(y.shape)}".encode() + y.tobytes())[:16]


def _golden_run(program: Program, x: dict[str, np.ndarray], check=None) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Outputs and per-instruction digests of ``program`` on ``x`` in every rounding mode."""
    from .. import interpreter

    outs, digests = {}, {}
    for mode in ROUNDING_MODES:
        seen: list[str] = []

        def trace(ins: Instr, y: np.ndarray) -> None:
            if check is not None:
                check(ins, y)
            seen.append(_digest(y))

        outs[mode] = np.asarray(interpreter.run(program, x, rounding=mode, trace=trace, chunk=GOLDEN_BATCH))  # one digest per instruction
        digests[mode] = seen
    return outs, digests


def _golden_check(program: Program, manifest: dict, tensors: dict[str, np.ndarray], fail: _Fail) -> None:
    """Rerun the stored golden input; every tensor's shape/dtype and the outputs must match."""
    g = manifest.get("golden")
    _need(isinstance(g, dict) and isinstance(g.get("outputs"), dict), fail, "golden", "missing or malformed", file=MANIFEST)
    stored = g.get("input")  # one tensor name (one-input programs), or {input name: tensor name}
    if isinstance(stored, str):
        stored = {program.input: stored}
    _need(isinstance(stored, dict) and sorted(stored) == sorted(program.inputs) and all(v in tensors for v in stored.values()),
          fail, "golden.input", f"must name a stored tensor for each input {program.inputs}", file=MANIFEST)
    _need(g.get("compare") == ("exact" if _exact(program) else "rtol"), fail, "golden.compare", "does not match the program", file=MANIFEST)
    _need(set(g["outputs"]) == set(ROUNDING_MODES) and all(v in tensors for v in g["outputs"].values()), fail,
          "golden.outputs", f"must name stored outputs for {list(ROUNDING_MODES)}", file=MANIFEST)
    x = {name: tensors[stored[name]] for name in program.inputs}
    n = next(iter(x.values())).shape[0]
    for name, t in stored.items():
        info, v = program.tensors[name], x[name]
        _need(v.dtype == np.dtype(info.dtype) and v.shape[1:] == tuple(info.shape[1:]) and v.shape[0] == n >= 1, fail, t,
              f"golden input does not match the program's input {name!r} ({info.dtype}{list(info.shape)})", file=TENSORS)

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
