"""program.json <-> Program: the versioned schema, and every structural check on load."""
from __future__ import annotations

import numpy as np

from .. import packing
from ..feeds import INT_DTYPE
from ..errors import ArtifactError, EdgequantError
from ..lowbit import groups
from ..program import Instr, Program, TensorInfo, from_jsonable, to_jsonable
from ..qmath import QParams, qrange
from .files import (_ST_CODES, PROGRAM, PROGRAM_SCHEMA, PROGRAM_VERSION, TENSORS, _array_sha, _Fail, _int_list, _is_int,
                    _need)

MAX_INPUT_ELEMENTS = 1 << 27  # per sample; a larger input shape in a file is corruption, not a model


RUN_ONLY_META = ("reconstruct",)  # program.meta keys kept in memory, not saved: seconds depend on the machine


def _qparams_to_dict(qp: QParams) -> dict:
    return {"scale": to_jsonable(qp.scale), "zero_point": to_jsonable(qp.zero_point), "bits": int(qp.bits), "signed": bool(qp.signed),
            "narrow": bool(qp.narrow), "axis": None if qp.axis is None else int(qp.axis)}


def _array_name(idx: int, key: str) -> str:
    return f"instrs.{idx}.{key}"


def program_to_files(program: Program) -> tuple[dict, dict[str, np.ndarray]]:
    """(program.json object, tensors) for ``program``; sub-byte/int8 weights are packed."""
    tensors: dict[str, np.ndarray] = {}
    instrs = []
    for idx, ins in enumerate(program.instrs):
        arrays = []
        for key, arr in ins.arrays.items():
            arr = np.asarray(arr)
            name = _array_name(idx, key)
            entry = {"key": key, "tensor": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "sha256": _array_sha(arr)}
            bits = ins.attrs.get("weight_bits")
            if key == "weight" and arr.dtype == np.int8 and bits is not None:
                try:
                    tensors[name] = _pack_weight(ins, arr, entry)
                except EdgequantError as e:
                    raise ArtifactError(f"cannot save instruction {idx} ({ins.op} from node '{ins.node}'): {e}") from e
            else:
                tensors[name] = arr
            arrays.append(entry)
        try:
            attrs = to_jsonable(dict(ins.attrs))
        except TypeError as e:
            raise ArtifactError(f"cannot save instruction {idx} ({ins.op} from node '{ins.node}'): attrs: {e}") from e
        instrs.append({"op": ins.op, "inputs": list(ins.inputs), "output": ins.output, "node": ins.node,
                       "attrs": attrs, "arrays": arrays})
    infos = [{"name": name, "dtype": t.dtype, "shape": [int(d) for d in t.shape],
              "qparams": None if t.qparams is None else _qparams_to_dict(t.qparams)}
             for name, t in program.tensors.items()]
    try:  # run-only entries (the rounding's timings) would make two saves of one program differ
        meta = to_jsonable({k: v for k, v in program.meta.items() if k not in RUN_ONLY_META})
    except TypeError as e:
        raise ArtifactError(f"cannot save the program's meta: {e}") from e
    doc = {"schema": PROGRAM_SCHEMA, "version": PROGRAM_VERSION, "input": program.input,
           "extra_inputs": list(program.extra_inputs), "output": program.output,
           "tensors": infos, "instrs": instrs, "meta": meta}
    return doc, tensors


def _pack_weight(ins: Instr, arr: np.ndarray, entry: dict) -> np.ndarray:
    """Packed bytes of an int8 weight: per channel at ``attrs.channel_bits`` when bits were allocated
    (exactly ``attrs.packed_weight_bytes``, what ``size_bytes`` counts), else whole at ``weight_bits``."""
    widths = ins.attrs.get("channel_bits")
    if widths is None:
        entry["packed_bits"] = int(ins.attrs["weight_bits"])
        return packing.pack(arr, entry["packed_bits"], signed=True)
    entry["packed_channel_bits"] = [int(b) for b in widths]
    buf = packing.pack_rows(arr, entry["packed_channel_bits"])
    claimed = ins.attrs.get("packed_weight_bytes")
    if claimed is not None and claimed != buf.size:
        raise ArtifactError(f"attrs.packed_weight_bytes is {claimed} but the per-channel packed weight is {buf.size} bytes; "
                            "size_bytes would not match the artifact")
    return buf


def _channel_rows(e: dict, attrs: dict, stored: np.ndarray, ver: int, fail: _Fail, fa: str) -> np.ndarray:
    """Unpack a per-channel-packed weight after checking its widths against program.json (format 2)."""
    cb, shape, f = e["packed_channel_bits"], e["shape"], fa.rsplit(".arrays.", 1)[0]
    _need(ver >= 2, fail, f"{fa}.packed_channel_bits", f"per-channel packing needs program schema version 2, got {ver}")
    _need("packed_bits" not in e and e["key"] == "weight" and e["dtype"] == "int8", fail, f"{fa}.packed_channel_bits",
          "only an int8 'weight' without packed_bits can be packed per channel")
    _need(_int_list(cb) and all(1 <= b <= packing.MAX_BITS for b in cb), fail, f"{fa}.packed_channel_bits",
          f"widths must be integers 1..{packing.MAX_BITS}, got {cb if not isinstance(cb, list) else cb[:8]!r}")
    _need(len(shape) >= 2 and shape[0] >= 1 and len(cb) == shape[0], fail, f"{fa}.packed_channel_bits",
          f"{len(cb)} widths for {shape[0] if shape else '?'} output channels (shape {shape})")
    acb = attrs.get("channel_bits")
    _need(isinstance(acb, (list, tuple)) and list(acb) == cb, fail, f"{fa}.packed_channel_bits", "does not match attrs.channel_bits")
    _need(attrs.get("weight_bits") == max(cb), fail, f"{f}.attrs.weight_bits",
          f"{attrs.get('weight_bits')!r} is not the widest channel ({max(cb)} bits)")
    _need(stored.dtype == np.uint8 and stored.ndim == 1, fail, fa, "packed data must be 1-D uint8")
    _need(attrs.get("packed_weight_bytes") == stored.size, fail, f"{f}.attrs.packed_weight_bytes",
          f"{attrs.get('packed_weight_bytes')!r} does not match the {stored.size} bytes stored in {e['tensor']!r}")
    try:
        vals, widths = packing.unpack_rows(stored, tuple(shape))
    except EdgequantError as err:
        raise fail(TENSORS, e["tensor"], str(err)) from None
    _need(widths.tolist() == cb, fail, e["tensor"], "per-channel widths in the packed header "
          f"differ from program.json's packed_channel_bits (first at channel {int(np.argmax(widths != np.asarray(cb)))})",
          file=TENSORS)
    return vals


def _decode(v, fail: _Fail, field: str):
    try:
        return from_jsonable(v)
    except (ValueError, TypeError, RecursionError) as e:
        raise fail(PROGRAM, field, str(e)) from None


def _shape(v, fail: _Fail, field: str) -> tuple[int, ...]:
    _need(_int_list(v) and len(v) >= 1 and all(1 <= d <= 1 << 24 for d in v), fail, field, f"invalid shape {v!r}")
    _need(int(np.prod(v[1:], dtype=np.int64)) <= MAX_INPUT_ELEMENTS, fail, field, f"implausibly large shape {v!r}")
    return tuple(v)


def _dtype_name(v, fail: _Fail, field: str) -> np.dtype:
    ok = isinstance(v, str) and v in _ST_CODES
    _need(ok, fail, field, f"unsupported dtype {v!r}")
    return np.dtype(v)


def _qparams(d, dtype: np.dtype, shape: tuple[int, ...], fail: _Fail, field: str) -> QParams:
    _need(isinstance(d, dict) and set(d) == {"scale", "zero_point", "bits", "signed", "narrow", "axis"}, fail, field,
          "malformed qparams")
    bits, signed, narrow, axis = d["bits"], d["signed"], d["narrow"], d["axis"]
    _need(isinstance(bits, int) and not isinstance(bits, bool) and (1 <= bits <= 8 or bits == 16), fail, f"{field}.bits",
          f"bit width {bits!r} is not supported (1..8, or 16 for act16 tensors)")
    _need(isinstance(signed, bool) and isinstance(narrow, bool), fail, field, "signed/narrow must be booleans")
    _need(dtype.kind in "iu", fail, field, f"qparams on a {dtype.name} tensor")
    lo, hi = qrange(bits, signed, narrow)
    info = np.iinfo(dtype)
    _need(info.min <= lo and hi <= info.max, fail, f"{field}.bits", f"{bits}-bit range [{lo}, {hi}] does not fit {dtype.name}")
    scale, zp = _decode(d["scale"], fail, f"{field}.scale"), _decode(d["zero_point"], fail, f"{field}.zero_point")
    s, z = np.asarray(scale), np.asarray(zp)
    _need(s.dtype.kind == "f" and s.size >= 1 and bool(np.all(np.isfinite(s))) and bool(np.all(s > 0)), fail,
          f"{field}.scale", f"scale must be finite and > 0, got {s.reshape(-1)[:4].tolist()}")
    _need(z.dtype.kind in "iu" and z.shape == s.shape and bool(np.all((z >= lo) & (z <= hi))), fail,
          f"{field}.zero_point", f"zero point must be integers in [{lo}, {hi}] shaped like the scale, got {z.reshape(-1)[:4].tolist()}")
    if axis is None:
        _need(s.size == 1, fail, f"{field}.scale", f"per-tensor qparams need one scale, got {s.size}")
    else:
        _need(isinstance(axis, int) and not isinstance(axis, bool) and 0 <= axis < len(shape), fail, f"{field}.axis",
              f"axis {axis!r} out of range for shape {shape}")
        _need(s.shape == (shape[axis],), fail, f"{field}.scale", f"per-channel scale shape {s.shape} != ({shape[axis]},)")
    return QParams(scale, zp, bits, signed, narrow, axis)


_GEMM_OPS = {"conv": "conv", "conv_dyn": "conv", "conv_f": "conv", "linear": "linear", "linear_dyn": "linear",
             "linear_f": "linear"}


_SHAPE_OPS = ("slice", "upsample", "const", "const_f")


def _check_shape_op(f: str, ins: Instr, tensors: dict[str, TensorInfo], fail: _Fail) -> None:
    """slice/upsample/const: the attributes the kernels index and allocate with, against the declared shapes."""
    a, out = ins.attrs, tensors[ins.output]
    if ins.op in ("const", "const_f"):
        v = ins.arrays.get("value")
        _need(not ins.inputs and v is not None and v.dtype == np.dtype("int8" if ins.op == "const" else "float32")
              and v.shape == tuple(out.shape) and v.ndim >= 1 and v.shape[0] == 1, fail, f"{f}.arrays.value",
              f"a constant must be {'int8' if ins.op == 'const' else 'float32'} of the declared shape {list(out.shape)} "
              "with batch dim 1")
        return
    _need(len(ins.inputs) == 1, fail, f"{f}.inputs", f"{ins.op} takes one input")
    x = tensors[ins.inputs[0]].shape
    if ins.op == "slice":
        keys = ("axis", "start", "stop", "step")
        ok = all(_is_int(a.get(k)) for k in keys) and 1 <= a["axis"] < len(x) and a["step"] >= 1 \
            and 0 <= a["start"] <= a["stop"] <= x[a["axis"]]
        _need(ok, fail, f"{f}.attrs", f"slice {[a.get(k) for k in keys]} does not fit the input shape {list(x)}")
        want = list(x[1:])
        want[a["axis"] - 1] = len(range(a["start"], a["stop"], a["step"]))
        _need(list(out.shape[1:]) == want, fail, f"{f}.output", f"declared shape {list(out.shape)} is not the slice's")
        return
    size = a.get("size")
    ok = (a.get("mode") in ("nearest", "bilinear") and isinstance(size, (list, tuple)) and len(size) == 2
          and all(_is_int(d) and d >= 1 for d in size) and len(x) == 4 and tuple(out.shape[1:]) == (x[1], *size))
    if ok and a["mode"] == "nearest":
        ok = size[0] % x[2] == 0 and size[1] % x[3] == 0
    _need(ok, fail, f"{f}.attrs", f"upsample {a.get('mode')!r} to {size!r} does not fit input {list(x)} / output {list(out.shape)}")


def _check_instr(k: int, ins: Instr, tensors: dict[str, TensorInfo], fail: _Fail) -> None:
    """Attribute and shape checks the kernels rely on (those not covered by the golden run)."""
    f = f"instrs[{k}]"
    a = ins.attrs
    out = tensors[ins.output]
    if "weight_bits" in a:
        wb = a["weight_bits"]
        _need(isinstance(wb, int) and not isinstance(wb, bool) and 1 <= wb <= 8, fail, f"{f}.attrs.weight_bits",
              f"bit width {wb!r} is not supported (1..8)")
    if "rounding" in a:  # recorded requantization rounding (lower); absent = gemmlowp double rounding
        _need(a["rounding"] == "single", fail, f"{f}.attrs.rounding", f"{a['rounding']!r} is not a known rounding; "
              "the only recorded value is 'single' (absent means gemmlowp double rounding)")
    if out.qparams is not None:
        lo, hi = out.qparams.qmin, out.qparams.qmax
        for key in ("act_min", "act_max"):
            if key in a:
                v = a[key]
                _need(isinstance(v, (int, np.integer)) and lo <= v <= hi, fail, f"{f}.attrs.{key}", f"{v!r} outside [{lo}, {hi}]")
        _need(a.get("act_min", lo) <= a.get("act_max", hi), fail, f"{f}.attrs", "act_min > act_max")
    for key, v in a.items():
        if key.startswith("m0_"):
            _need(isinstance(v, (int, np.integer)) and 0 <= v < 2**31, fail, f"{f}.attrs.{key}", f"Q31 multiplier {v!r} out of range")
        if key.startswith("shift_"):
            _need(isinstance(v, (int, np.integer)) and -31 <= v <= 30, fail, f"{f}.attrs.{key}", f"shift {v!r} out of range")
    arr = ins.arrays
    if "m0" in arr:
        _need(arr["m0"].dtype.kind in "iu" and bool(np.all((arr["m0"] >= 0) & (arr["m0"] < 2**31))), fail,
              f"{f}.arrays.m0", "Q31 multipliers out of range")
    if "shift" in arr:
        _need(arr["shift"].dtype.kind in "iu" and bool(np.all((arr["shift"] >= -31) & (arr["shift"] <= 30))), fail,
              f"{f}.arrays.shift", "shifts out of range [-31, 30]")
    for key in ("multiplier", "w_scale"):
        if key in arr:
            _need(arr[key].dtype.kind == "f" and bool(np.all(np.isfinite(arr[key]))), fail, f"{f}.arrays.{key}", "not finite")
    if ins.op in _SHAPE_OPS:
        _check_shape_op(f, ins, tensors, fail)
    kind = _GEMM_OPS.get(ins.op)
    if kind is None or "weight" not in arr:
        return
    w = arr["weight"]
    x = tensors[ins.inputs[0]] if ins.inputs else None
    _need(len(ins.inputs) == 1 and x is not None, fail, f"{f}.inputs", f"{ins.op} takes one input")
    if kind == "linear":
        _need(w.ndim == 2 and w.shape[0] == out.shape[-1] and w.shape[1] == x.shape[-1], fail, f"{f}.arrays.weight",
              f"weight shape {w.shape} does not map input {x.shape} to output {out.shape}")
    else:
        g = a.get("groups", 1)
        _need(_is_int(g) and g >= 1, fail, f"{f}.attrs.groups", f"invalid groups {g!r}")
        _need(w.ndim in (3, 4) and w.shape[0] == out.shape[1] and w.shape[1] * g == x.shape[1], fail,
              f"{f}.arrays.weight", f"weight shape {w.shape} (groups {g}) does not map input {x.shape} to output {out.shape}")
        for key in ("stride", "dilation"):
            v = a.get(key, (1,))
            _need(isinstance(v, (tuple, list)) and all(_is_int(s) and s >= 1 for s in v), fail, f"{f}.attrs.{key}", f"invalid {v!r}")
        pad = a.get("padding", (0,))
        _need(isinstance(pad, (tuple, list)) and all(_is_int(p) and 0 <= p <= 1 << 16 for p in pad), fail,
              f"{f}.attrs.padding", f"invalid {pad!r}")
    for key in ("bias", "bias_f", "w_scale", "m0", "shift", "multiplier"):
        if key in arr:
            _need(arr[key].ndim == 1 and arr[key].shape[0] in (1, w.shape[0]), fail, f"{f}.arrays.{key}",
                  f"shape {arr[key].shape} does not match {w.shape[0]} output channels")
    if groups.ARRAY in arr:  # group-wise scales (lowbit/groups.py): the kernel indexes columns by group
        gs, mult = a.get(groups.ATTR), arr[groups.ARRAY]
        _need(_is_int(gs) and gs >= 1, fail, f"{f}.attrs.{groups.ATTR}", f"{gs!r} is not a positive group size")
        want = (w.shape[0], groups.n_groups(int(np.prod(w.shape[1:])), gs))
        _need(mult.dtype == np.uint8 and tuple(mult.shape) == want and bool(np.all(mult >= 1)), fail,
              f"{f}.arrays.{groups.ARRAY}", f"{mult.dtype} {tuple(mult.shape)}: expected uint8 {want} multipliers >= 1")


def program_from_files(doc: dict, tensors: dict[str, np.ndarray], fail: _Fail, format_version: int = PROGRAM_VERSION) -> Program:
    """Rebuild and validate a Program from program.json's object and the stored tensors; the program
    schema version must be the artifact's ``format_version`` (they move together)."""
    from ..kernels import RUN

    _need(doc.get("schema") == PROGRAM_SCHEMA, fail, "schema", f"expected {PROGRAM_SCHEMA!r}, got {doc.get('schema')!r}")
    ver = doc.get("version")
    _need(isinstance(ver, int) and not isinstance(ver, bool) and 1 <= ver <= PROGRAM_VERSION, fail, "version",
          f"program schema version {ver!r} is not supported (this edgequant reads 1..{PROGRAM_VERSION}; upgrade it if newer)")
    _need(ver == format_version, fail, "version", f"program schema version {ver} does not match the manifest's "
          f"format_version {format_version}")
    keys = {"schema", "version", "input", "output", "tensors", "instrs", "meta"} | ({"extra_inputs"} if ver >= 3 else set())
    _need(set(doc) == keys, fail, "", "unexpected or missing keys")
    infos: dict[str, TensorInfo] = {}
    _need(isinstance(doc["tensors"], list), fail, "tensors", "must be a list")
    for k, t in enumerate(doc["tensors"]):
        f = f"tensors[{k}]"
        _need(isinstance(t, dict) and set(t) == {"name", "dtype", "shape", "qparams"} and isinstance(t["name"], str), fail, f,
              "malformed tensor info")
        _need(t["name"] not in infos, fail, f"{f}.name", f"duplicate tensor {t['name']!r}")
        dt = _dtype_name(t["dtype"], fail, f"{f}.dtype")
        shape = _shape(t["shape"], fail, f"{f}.shape")
        qp = None if t["qparams"] is None else _qparams(t["qparams"], dt, shape, fail, f"{f}.qparams")
        infos[t["name"]] = TensorInfo(t["dtype"], shape, qp)
    inp, outp = doc["input"], doc["output"]
    _need(isinstance(inp, str), fail, "input", f"must be a tensor name, got {inp!r}")
    extra_in = doc.get("extra_inputs", [])
    _need(isinstance(extra_in, list) and all(isinstance(n, str) for n in extra_in), fail, "extra_inputs", "must be a list of names")
    names = [inp, *extra_in]
    _need(len(set(names)) == len(names), fail, "extra_inputs", "names an input twice")
    for n in names:
        _need(n in infos, fail, "input", f"input {n!r} has no tensor info")
        # float32 features; since version 3 also int64 token ids / padding masks
        ok_dtype = infos[n].dtype == "float32" or (ver >= 3 and infos[n].dtype == INT_DTYPE)
        _need(len(infos[n].shape) >= 2 and ok_dtype, fail, "input",
              f"input {n!r} must be a float32 (N, ...) tensor" + (" or int64 token ids / masks" if ver >= 3 else ""))
    defined = set(names)
    used: set[str] = set()
    instrs = []
    _need(isinstance(doc["instrs"], list), fail, "instrs", "must be a list")
    for k, d in enumerate(doc["instrs"]):
        f = f"instrs[{k}]"
        _need(isinstance(d, dict) and set(d) == {"op", "inputs", "output", "node", "attrs", "arrays"}, fail, f, "malformed instruction")
        op, ins_, out, node = d["op"], d["inputs"], d["output"], d["node"]
        _need(isinstance(op, str) and op in RUN, fail, f"{f}.op", f"unknown op {op!r} (no kernel in this edgequant)")
        _need(isinstance(ins_, list) and all(isinstance(i, str) for i in ins_), fail, f"{f}.inputs", "must be a list of names")
        for i in ins_:
            _need(i in defined, fail, f"{f}.inputs", f"uses {i!r} before it is defined")
        _need(isinstance(out, str) and out in infos and out not in defined, fail, f"{f}.output",
              f"{out!r} is redefined or has no tensor info")
        _need(isinstance(node, str), fail, f"{f}.node", "must be a string")
        attrs = _decode(d["attrs"], fail, f"{f}.attrs")
        _need(isinstance(attrs, dict), fail, f"{f}.attrs", "must be an object")
        arrays = {}
        _need(isinstance(d["arrays"], list), fail, f"{f}.arrays", "must be a list")
        for e in d["arrays"]:
            _need(isinstance(e, dict) and {"key", "tensor", "dtype", "shape", "sha256"} <= set(e)
                  <= {"key", "tensor", "dtype", "shape", "sha256", "packed_bits", "packed_channel_bits"}
                  and isinstance(e["key"], str) and isinstance(e["tensor"], str), fail, f"{f}.arrays", "malformed array entry")
            fa = f"{f}.arrays.{e['key']}"
            name = e["tensor"]
            _need(name in tensors and name not in used and not name.startswith("golden."), fail, f"{fa}.tensor",
                  f"tensor {name!r} is missing from {TENSORS} or used twice")
            _need(e["key"] not in arrays, fail, fa, "duplicate key")
            used.add(name)
            dt = _dtype_name(e["dtype"], fail, f"{fa}.dtype")
            shape = e["shape"]
            _need(_int_list(shape) and all(s >= 0 for s in shape), fail, f"{fa}.shape", f"invalid shape {shape!r}")
            stored = tensors[name]
            if "packed_channel_bits" in e:
                arrays[e["key"]] = _channel_rows(e, attrs, stored, ver, fail, fa)
            elif "packed_bits" in e:
                bits = e["packed_bits"]
                _need(ver < 2 or "channel_bits" not in attrs, fail, f"{fa}.packed_bits", "a bit-allocated weight "
                      "(attrs.channel_bits) must be packed per channel (packed_channel_bits) since format version 2")
                _need(bits == attrs.get("weight_bits") and dt == np.int8 and e["key"] == "weight", fail, f"{fa}.packed_bits",
                      f"packed width {bits!r} does not match attrs.weight_bits {attrs.get('weight_bits')!r}")
                _need(stored.dtype == np.uint8 and stored.ndim == 1, fail, f"{fa}", "packed data must be 1-D uint8")
                try:
                    arrays[e["key"]] = packing.unpack(stored, bits, True, tuple(shape))
                except EdgequantError as err:
                    raise fail(TENSORS, name, str(err)) from None
            else:
                _need(stored.dtype == dt and list(stored.shape) == shape, fail, fa,
                      f"stored {stored.dtype}{list(stored.shape)} does not match declared {dt.name}{shape}")
                arrays[e["key"]] = stored
            _need(_array_sha(arrays[e["key"]]) == e["sha256"], fail, f"{fa}.sha256",
                  f"the values of tensor {name!r} in {TENSORS} are not the ones this program was saved with")
        _need(ver < 2 or "channel_bits" not in attrs or any("packed_channel_bits" in e for e in d["arrays"]), fail,
              f"{f}.attrs.channel_bits", "set, but no weight is packed per channel (packed_channel_bits)")
        instr = Instr(op, list(ins_), out, attrs, arrays, node)
        _check_instr(k, instr, infos, fail)
        instrs.append(instr)
        defined.add(out)
    _need(isinstance(outp, str) and outp in defined, fail, "output", f"output {outp!r} is not computed by any instruction")
    extra = sorted(n for n in tensors if n not in used and not n.startswith("golden."))
    _need(not extra, fail, "", f"{TENSORS} holds tensors no instruction uses: {extra[:3]}", file=TENSORS)
    meta = _decode(doc["meta"], fail, "meta")
    _need(isinstance(meta, dict), fail, "meta", "must be an object")
    return Program(instrs, inp, outp, infos, meta, extra_inputs=list(extra_in))
