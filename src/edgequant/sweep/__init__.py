"""``edgequant sweep``: how far can this model be quantized -- every recipe, measured, and the answer.

    from edgequant.sweep import SweepConfig, sweep
    result = sweep(SweepConfig(recipes=["w8a8-pc", "w4a4-aciq"], out="runs/x"))
    result.report["answer"]

``run_sweep`` measures in memory; ``write_outputs`` saves the answer's artifact and writes
report.json, report.md, frontier.png and layers.png into the output folder.
"""
from __future__ import annotations

from pathlib import Path

from . import plots, report
from .runner import SCHEMA_VERSION, Progress, SweepConfig, SweepResult, run_sweep, save_answer


def write_outputs(result: SweepResult, out: str | Path, json_path: str | Path | None = None) -> dict[str, Path]:
    """Save the answer's model next to the report, then write the report files; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = result.report
    if rep["config"].get("save", True):
        save_answer(result, out)
    else:
        rep["answer"]["notes"] = ["artifacts not saved (--no-save)"]
    rep["answer"]["line"] = report.answer_line(rep)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "frontier": out / "frontier.png",
             "layers": out / "layers.png"}
    plots.frontier(rep, paths["frontier"])
    plots.layers(rep, paths["layers"])
    rep["files"] = {k: str(v) for k, v in paths.items()}
    report.write_json(rep, paths["json"])
    paths["markdown"].write_text(report.markdown(rep))
    if json_path is not None and str(json_path) != "-":
        report.write_json(rep, Path(json_path))
        paths["json_copy"] = Path(json_path)
    return paths


def sweep(cfg: SweepConfig, progress: Progress | None = None) -> SweepResult:
    """Run the sweep and write everything into ``cfg.out``."""
    result = run_sweep(cfg, progress)
    write_outputs(result, cfg.out)
    return result


__all__ = ["SCHEMA_VERSION", "SweepConfig", "SweepResult", "run_sweep", "write_outputs", "save_answer", "sweep"]
