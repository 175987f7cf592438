"""What every format's ``export_*`` does around its emitter: refuse unknown options by name, make
the folder, write, and turn an OS error into an ``ExportError`` that names the file."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..errors import ExportError
from ..lowbit import groups
from ..program import Program


def check_options(fmt: str, options: dict, known: Iterable[str]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ExportError(f"unknown {fmt} export option(s) {unknown}; known: {', '.join(known)}")


def write_file(fmt: str, path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as e:
        raise ExportError(f"cannot write {fmt} file {path}: {e}") from e
    return path


def refuse_group_weights(program: Program, fmt: str, has_form: frozenset[str] = frozenset()) -> None:
    """Group-wise weight scales (``lowbit/groups.py``) outside the ops in ``has_form`` have no
    emitter: refuse, naming the layers."""
    bad = [ins for ins in program.instrs if groups.ARRAY in ins.arrays and ins.op not in has_form]
    if not bad:
        return
    name = program.meta.get("recipe", {}).get("name", "?")
    layers = ", ".join(f"'{ins.node}'" for ins in bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    raise ExportError(
        f"recipe {name!r} cannot be exported to {fmt}: layer(s) {layers} have group-wise weight scales "
        f"(weight_group={bad[0].attrs.get(groups.ATTR)}: a channel scale times an integer multiplier per group of input "
        f"columns), which the {fmt} emitter has no form for. Run it with the interpreter (q.run), or quantize "
        "without the weight_group option (e.g. 'w4a16-gptq', 'w4a8-gptq') to export"
        + (f" ({', '.join(sorted(has_form))} layers with groups do export)" if has_form else ""))
