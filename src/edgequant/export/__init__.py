"""Deployable files for other runtimes: ``export(q, path, format="onnx", **options)``.

Emitters are a table keyed by format; each is ``fn(q, path, **options)``. A format's module is
imported only when used, so its dependencies stay optional. Add a format = one module + one entry.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ExportError

# format -> "module:function" (relative to this package)
EMITTERS: dict[str, str] = {
    "onnx": "onnx:export_onnx",
    "tflite": "tflite:export_tflite",
}


def register_emitter(fmt: str, target: str) -> None:
    """Register ``target``: "module:function", the module in this package or a dotted absolute path."""
    EMITTERS[fmt] = target


def export(q, path, format: str = "onnx", **options) -> Path:
    """Write quantized model ``q`` to ``path`` in ``format`` ("onnx": QDQ by default, see
    ``export.onnx.to_onnx`` for options). Returns the path written."""
    if format not in EMITTERS:
        raise ExportError(f"export format {format!r} is not supported; available: {', '.join(sorted(EMITTERS))}")
    mod_name, fn_name = EMITTERS[format].split(":")
    module = importlib.import_module(mod_name if "." in mod_name else f"{__name__}.{mod_name}")
    return getattr(module, fn_name)(q, path, **options)


__all__ = ["export", "register_emitter", "EMITTERS"]
