"""The report of one run folder, laid out from analysis/findings.py's sections: the charts,
report/summary.md and report/index.html. Nothing here computes a figure or words one.

The sweep and `orch report` both call write_report on analyze's Findings, from the saved records.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestrator.analysis.findings import HTML, MARKDOWN, Findings, Section
from orchestrator.common.show import printable

from .category_heatmap import draw_category_heatmap
from .cost_charts import draw_cost
from .names import for_charts, short, shortened
from .overlay import published_overlay
from .charts import (draw_acceptance_by_position, draw_acceptance_length, draw_charts, draw_load, draw_lossless,
                     draw_model, draw_pairs, draw_phase_rates)


@dataclass
class Report:
    charts: list[Path]
    html: Path
    markdown: Path


def write_report(found: Findings) -> Report:
    """Draw the charts (the published figures on them, where the findings matched any) and write
    the two report files; never through a link (results/rundir.py), what servers and files said
    shown with its escapes."""
    run = found.run
    charts = _draw(found, published_overlay(found.published))
    pngs = [c for c in charts if c.suffix == ".png"]
    run.write_file("report/index.html", printable(html_page(found, pngs), lines=True))
    run.write_file("report/summary.md", printable(markdown(found), lines=True))
    return Report(charts, run.path / "report" / "index.html", run.path / "report" / "summary.md")


def _draw(found: Findings, overlay) -> list[Path]:
    """Every chart, its names in their short forms (plots/names.py)."""
    run = found.run
    sub = chart_subtitle(found)
    summary, pairs, model, lossless = (for_charts(f) for f in (found.summary, found.pairs, found.model, found.lossless))
    engines = shortened(c.engine for c in found.cells)
    cells = [c.model_copy(update={"engine": engines[c.engine]}) for c in found.cells]
    return (draw_charts(summary, sub, run.path, overlay) + draw_phase_rates(summary, sub, run.path)
            + draw_cost(summary, sub, run.path)
            + draw_pairs(pairs, summary, sub, run.path)
            + draw_load(summary, sub, run.path)
            + draw_acceptance_length(summary, sub, run.path) + draw_acceptance_by_position(cells, sub, run.path)
            + draw_model(model, sub, run.path) + draw_lossless(lossless, sub, run.path)
            + draw_category_heatmap(found.categories, sub, run.path))


def chart_subtitle(found: Findings) -> str:
    """The findings' subtitle for a chart: each name in its short form, and no more than three models."""
    models = [short(m) for m in found.models[:3]] + ([f"{len(found.models) - 3} more"] if len(found.models) > 3 else [])
    return printable(f"model: {', '.join(models) or '?'} · machine: {short(found.machine, 80)}")


# ---------------------------------------------------------------- Markdown


def markdown(found: Findings) -> str:
    lines = [f"## {found.title}", "", found.subtitle, ""]
    for s in found.sections:
        if MARKDOWN in s.outputs:
            lines += _md_section(s)
    return "\n".join(lines)


def _md_section(s: Section) -> list[str]:
    """Title, caption, then the text fenced or else the table, then the notes; a blank line after each."""
    out = [f"### {s.title}", ""] if s.headed else []
    if s.caption:
        out += [f"**{s.caption}**" if s.strong else s.caption, ""]
    if s.text:
        out += ["```", s.text, "```", ""]
    elif s.table is not None:
        out += _md_table(s.table, list(s.table.columns)) + [""]
    if s.notes:
        out += [f"- {n}" for n in s.notes] + [""]
    return out


def _md_table(df: pd.DataFrame, cols: list[str]) -> list[str]:
    if df.empty:
        return ["(none)"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in df[cols].itertuples(index=False)]
    return out


MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _md_cell(v) -> str:
    """A table cell from any text (prompt ids, model output): no HTML, no Markdown markup and no line
    break of its own gets through; a break shows as ⏎."""
    if isinstance(v, float):
        return f"{v:.2f}"
    text = MD_SPECIAL.sub(r"\\\1", html.escape(str(v), quote=False))
    return LINE_BREAK.sub("⏎", text)


# ---------------------------------------------------------------- HTML


def html_page(found: Findings, pngs: list[Path]) -> str:
    body = "\n".join(_html_section(s, pngs) for s in found.sections if HTML in s.outputs)
    return _PAGE.format(title=html.escape(found.run.path.name), subtitle=html.escape(found.subtitle), body=body)


def _html_section(s: Section, pngs: list[Path]) -> str:
    esc = html.escape
    parts = [f'<h2 id="{s.key}">{esc(s.title)}</h2>']
    if s.caption:
        parts.append(f"<p>{esc(s.caption)}</p>")
    if s.key == "charts":
        parts += [f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,'
                  f'{base64.b64encode(p.read_bytes()).decode()}"></figure>' for p in pngs]
    if s.table is not None:
        parts.append(s.table.to_html(index=False, na_rep="-", border=0, float_format=lambda v: f"{v:.2f}"))
    elif s.text:
        parts.append(f"<pre>{esc(s.text)}</pre>")
    if s.notes:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in s.notes) + "</ul>")
    return "".join(parts)


# No script, font or image from the network: the page must open offline.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>orch report: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 640px; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 12px; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }}
#what-to-run + pre {{ white-space: pre-wrap; }}
</style></head><body>
<h1>orch report: {title}</h1>
<p>{subtitle}</p>
{body}
</body></html>
"""
