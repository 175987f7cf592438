"""SearchResult: the chosen per-layer recipe, its quantized model, and every candidate measured."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..quantized import QuantizedModel
from ..recipes import Recipe


@dataclass
class SearchResult:
    """What ``edgequant.search`` found. Every figure is measured on the integer program.

    ``trace``: one dict per candidate evaluated, in order (``step``: ``uniform`` | ``solve`` |
    ``repair`` | ``refine``), with its widths, estimated noise/drop, measured accuracy, drop and size.
    """

    recipe: Recipe  # frozen, named, with one LayerOverride per layer; saved with the artifact
    quantized: QuantizedModel
    accuracy: float  # the metric of the integer program on eval (percent)
    drop: float  # fp32 - accuracy, points
    size_bytes: int
    latency_ms: float | None  # one batch of eval inputs on ``engine`` (median)
    trace: list[dict]
    fp32_accuracy: float = 0.0
    budget: float = 1.0
    objective: str = "size"
    metric: str = "top1"
    engine: str = "interpreter"  # the verified engine that computed accuracy and latency
    search_s: float = 0.0
    table: dict = field(default_factory=dict, repr=False)  # per-layer costs (search.table)

    @property
    def widths(self) -> dict[str, tuple[int, int]]:
        """module -> (weight_bits, act_bits) chosen."""
        return {o.pattern: (o.weight_bits, o.act_bits) for o in self.recipe.overrides}

    def summary(self) -> dict:
        """JSON-able summary (the sweep's report and bench/mixed.py use it)."""
        return {"recipe": self.recipe.name, "objective": self.objective, "budget": self.budget, "metric": self.metric,
                "fp32_accuracy": self.fp32_accuracy, "accuracy": self.accuracy, "drop": self.drop,
                "size_bytes": self.size_bytes, "latency_ms": self.latency_ms, "engine": self.engine,
                "search_s": self.search_s, "candidates": len(self.trace),
                "layers": [{"module": o.pattern, "weight_bits": o.weight_bits, "act_bits": o.act_bits}
                           for o in self.recipe.overrides],
                "trace": self.trace}
