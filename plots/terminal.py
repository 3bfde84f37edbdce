"""The terminal's layout of a run's findings (analysis/findings.py): the sections marked for
it, each as fixed-width text, then where the files are. Nothing here computes or words a figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.analysis.findings import TERMINAL, Findings, Section, analyze
from orchestrator.common.errors import ResultsError
from orchestrator.common.show import printable
from orchestrator.results.rundir import RunDir, fix_for, why

from .report import Report, write_report


@dataclass(frozen=True)
class RunReport:
    """What `orch sweep`, `orch bench` and `orch report` print once a run's report is written."""

    text: str  # the terminal's layout
    published_note: str  # with published=True: what of the published figures matched
    warnings: tuple[str, ...]  # records skipped or kept as failed on reading back
    failed: bool  # a request failed


def report_run(run: RunDir, published: bool = False) -> RunReport:
    """Analyze the run once, write its CSVs, charts and report, and lay out the terminal's text;
    `published`: with the published figures drawn on the charts where they match."""
    try:
        found = analyze(run.path, published)
        report = write_report(found)
    except OSError as exc:
        raise ResultsError(f"cannot write the report in {run.path}: {why(exc)}; the records are complete: "
                           f"{fix_for(exc)}, then run orch report {run.path}") from exc
    return RunReport(terminal_text(found, report), found.published_note, tuple(found.warnings), found.failed)


def terminal_text(found: Findings, report: Report) -> str:
    blocks = [_plain(s) for s in found.sections if TERMINAL in s.outputs]
    paths = [f"{name + ':':<8} {printable(path)}" for name, path in _files(found, report)]
    return "\n\n".join(printable(b, lines=True) for b in blocks if b) + "\n\n" + "\n".join(paths)


def _plain(s: Section) -> str:
    parts = [s.caption] if s.caption else []
    if s.text:
        parts.append(s.text)
    elif s.table is not None and len(s.table):
        parts.append(s.table.to_string(index=False))
    parts += list(s.notes)
    return "\n".join(parts)


def _files(found: Findings, report: Report) -> list[tuple[str, Path]]:
    out = [(label, found.written[name]) for label, name in
           (("summary", "summary.csv"), ("pairs", "pairs.csv"), ("model", "model.csv"),
            ("by category", "summary_by_category.csv")) if name in found.written]
    out += [("chart", c) for c in report.charts if c.suffix == ".png"]
    return out + [("report", report.html)]
