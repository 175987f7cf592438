"""What every kernel may read besides its inputs: the rounding mode and tensor metadata."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..program import Instr, TensorInfo
from ..qmath import QParams, fake_quantize


@dataclass
class KernelContext:
    rounding: str
    tensors: dict[str, TensorInfo]

    def qp(self, name: str) -> QParams:
        return self.tensors[name].qparams

    @property
    def half_away(self) -> bool:
        return self.rounding == "gemmlowp"

    def requant_rounding(self, instr: Instr) -> str:
        """The rounding a requantizing instruction uses: the run's mode, except that in the
        gemmlowp mode an instruction lowered with ``rounding: "single"`` (an output narrower than
        8 bits, ``qmath.requant_rounding``) rounds once. Programs saved without the attr keep
        double rounding."""
        if self.rounding == "gemmlowp" and instr.attrs.get("rounding") == "single":
            return "single"
        return self.rounding

    def fq(self, x: torch.Tensor, name: str, lo: int | None = None, hi: int | None = None) -> torch.Tensor:
        """Fake-quantize ``x`` with tensor ``name``'s qparams, optionally to a narrower int range."""
        qp = self.qp(name)
        lo = qp.qmin if lo is None else lo
        hi = qp.qmax if hi is None else hi
        return fake_quantize(x, float(qp.scale), float(qp.zero_point), lo, hi, half_away=self.half_away)

    def real(self, name: str, q: int) -> float:
        qp = self.qp(name)
        return float(qp.scale) * (q - int(qp.zero_point))


def act_bounds(instr: Instr, ctx: KernelContext) -> tuple[int, int]:
    """Integer clamp of an instruction's output: the container range narrowed by a fused act."""
    qp = ctx.qp(instr.output)
    return int(instr.attrs.get("act_min", qp.qmin)), int(instr.attrs.get("act_max", qp.qmax))
