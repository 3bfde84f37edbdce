"""Summary and charts for one run folder. The sweep and `orch report` both call this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestrator.environment import machine_label
from orchestrator.results import SUMMARY, RunDir
from orchestrator.summary import summarize

from .charts import draw_charts


@dataclass
class Report:
    summary: pd.DataFrame
    summary_path: Path
    charts: list[Path]


def build_report(run_dir: Path) -> Report:
    run = RunDir(run_dir)
    summary = summarize(run.requests(), run.cells())
    summary_path = run.path / SUMMARY
    summary.to_csv(summary_path, index=False)
    charts = draw_charts(summary, subtitle(run), run.path)
    return Report(summary, summary_path, charts)


def subtitle(run: RunDir) -> str:
    env = run.environment()
    models = sorted({e.get("model", "?") for e in env.get("engines", {}).values()})
    return f"model: {', '.join(models) or '?'} · machine: {machine_label(env)}"
