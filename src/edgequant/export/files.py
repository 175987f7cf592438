"""What every format's ``export_*`` does around its emitter: refuse unknown options by name, make
the folder, write, and turn an OS error into an ``ExportError`` that names the file."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..errors import ExportError


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
