"""edgequant: how far can this model be quantized?

    import edgequant as eq
    model = eq.models.digits_cnn(pretrained=True)
    calib, test = eq.data.digits()
    q = eq.quantize(model, "w8a8-pc", calib)
    q.run(x)        # the integer program
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import data, models  # noqa: E402
from . import qat, reconstruct  # noqa: E402  (registers the QAT and reconstruction recipes)
from .api import quantize  # noqa: E402
from .mixed import SearchResult, search  # noqa: E402
from .artifact import load  # noqa: E402
from .errors import EdgequantError  # noqa: E402
from .quantized import QuantizedModel  # noqa: E402
from .recipes import RECIPES, LayerOverride, Recipe, TensorSpec, get_recipe  # noqa: E402

__all__ = ["quantize", "search", "SearchResult", "load", "QuantizedModel", "Recipe", "TensorSpec", "LayerOverride", "RECIPES", "get_recipe",
           "EdgequantError", "data", "models", "qat", "reconstruct", "__version__"]
