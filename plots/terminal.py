"""The terminal's layout of a run's findings (analysis/findings.py): the sections marked for
it, each as fixed-width text, then where the files are. Nothing here computes or words a figure."""

from __future__ import annotations

from pathlib import Path

from orchestrator.analysis.findings import TERMINAL, Findings, Section
from orchestrator.common.show import printable

from .report import Report


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
