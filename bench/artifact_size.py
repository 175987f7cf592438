"""Does the saved artifact hold what ``size_bytes`` claims?  Bytes of ``tensors.safetensors`` next to
``q.size_bytes`` for the low-bit recipes on the digits CNN and resnet_digits.

    python bench/artifact_size.py                      # both models, default recipes
    python bench/artifact_size.py digits_cnn w2a4-aciq # one model, chosen recipes

Columns: ``size_bytes`` (what edgequant reports: packed weights, int32 bias, float scales, 8 bytes
per activation qparams); ``safetensors`` (the whole file: header, every instruction array, the
golden input/outputs); ``weights stored`` (payload bytes of the stored weight tensors) and
``weights counted`` (packed weight bytes ``size_bytes`` counts). ``arrays == size`` checks the
exact relation: stored instruction-array payload (requant multipliers/shifts excluded, they are
derived) + 8 * qparams == size_bytes. ``rest of file`` is what the file holds beyond the counted
arrays: the safetensors header, the golden input/outputs (the load-time check) and the derived
multipliers/shifts.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import edgequant as eq
from edgequant.artifact import TENSORS, read_safetensors

MODELS = ("digits_cnn", "resnet_digits")
RECIPES = ("w8a8-pc", "w4a4", "w4a4-aciq", "w2a4-aciq", "w1a8-xnor")
_DERIVED = ("m0", "shift", "multiplier")


def _weight_counted(program) -> int:
    total = 0
    for ins in program.instrs:
        w = ins.arrays.get("weight")
        if w is not None and w.dtype == np.int8:
            bits = ins.attrs.get("weight_bits", 8)
            total += int(ins.attrs.get("packed_weight_bytes", (w.size * bits + 7) // 8))
    return total


def measure(model_name: str, recipe: str, calib) -> dict:
    torch.manual_seed(0)
    model = getattr(eq.models, model_name)(pretrained=True)
    q = eq.quantize(model, recipe, calib)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "m.edgequant"
        q.save(root)
        raw = (root / TENSORS).read_bytes()
        back = eq.load(root)
    stored = read_safetensors(raw)
    arrays = {n: t for n, t in stored.items() if n.startswith("instrs.")}
    w_stored = sum(t.nbytes for n, t in arrays.items() if n.endswith(".weight"))
    a_stored = sum(t.nbytes for n, t in arrays.items() if n.rsplit(".", 1)[1] not in _DERIVED)
    n_qp = sum(1 for t in q.program.tensors.values() if t.qparams is not None)
    header = 8 + int.from_bytes(raw[:8], "little")
    golden = sum(t.nbytes for n, t in stored.items() if n.startswith("golden."))
    derived = sum(t.nbytes for n, t in arrays.items() if n.rsplit(".", 1)[1] in _DERIVED)
    if header + golden + derived + a_stored != len(raw):  # pragma: no cover - a reader bug, not a measurement
        raise SystemExit(f"{model_name} {recipe}: file bytes not accounted for")
    x = next(iter(eq.data.digits(batch_size=64, calib_size=64)[1]))[0][:16].numpy()
    same = all(np.array_equal(q.run(x, rounding=m, return_int=True), back.run(x, rounding=m, return_int=True))
               for m in ("gemmlowp", "onnxruntime"))
    return {"model": model_name, "recipe": recipe, "size_bytes": q.size_bytes, "safetensors": len(raw),
            "w_stored": w_stored, "w_counted": _weight_counted(q.program),
            "exact": a_stored + 8 * n_qp == q.size_bytes, "roundtrip": same,
            "rest": f"{header:,} + {golden:,} + {derived:,}"}


def main(argv: list[str]) -> None:
    models = [a for a in argv if a in MODELS] or list(MODELS)
    recipes = [a for a in argv if a not in MODELS] or list(RECIPES)
    calib, _ = eq.data.digits(batch_size=64, calib_size=128)
    print(f"{'model':<14} {'recipe':<11} {'size_bytes':>10} {'safetensors':>11} {'weights stored':>14} "
          f"{'weights counted':>15} {'arrays == size':>14} {'round trip':>10}  rest of file (header + golden + m0/shift)")
    for m in models:
        for r in recipes:
            row = measure(m, r, calib)
            print(f"{m:<14} {r:<11} {row['size_bytes']:>10,} {row['safetensors']:>11,} {row['w_stored']:>14,} "
                  f"{row['w_counted']:>15,} {str(row['exact']):>14} {'bit-exact' if row['roundtrip'] else 'DIFFERS':>10}  {row['rest']}",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
