"""Typed errors. Every message says what was wrong, the value received, and the fix.

Users catch ``EdgequantError``; the CLI turns it into one paragraph and exit code 2.
"""
from __future__ import annotations


class EdgequantError(Exception):
    """Base class of every error edgequant raises on purpose."""


class UnsupportedOpError(EdgequantError):
    """The model uses an operation the integer program cannot express (yet)."""


class CaptureError(EdgequantError):
    """The model could not be traced into edgequant's graph."""


class CalibrationError(EdgequantError):
    """Calibration data is missing, empty, or not finite."""


class InputError(EdgequantError):
    """An input tensor does not match what the quantized model was built for."""


class RecipeError(EdgequantError):
    """Unknown recipe name or impossible recipe settings."""


class ArtifactError(EdgequantError):
    """A saved artifact is missing, corrupt, or inconsistent."""


class ExportError(EdgequantError):
    """The quantized program cannot be written in the requested format."""


class PluginError(EdgequantError):
    """A user model/data/metric plug-in (FILE.py:FUNC) could not be loaded or used."""


class BudgetError(EdgequantError):
    """No quantized program meets the requested accuracy budget (``edgequant.search``)."""
