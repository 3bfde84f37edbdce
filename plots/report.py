"""Summary, lossless check, charts and the hand-around report for one run folder.

The sweep and `orch report` both call build_report, from the saved records alone.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from engines import ENGINES

from orchestrator.analysis.categories import CategoryView, category_view
from orchestrator.analysis.load import format_crossover
from orchestrator.analysis.drift import checked, flagged
from orchestrator.analysis.recommend import format_advice, what_to_run
from orchestrator.analysis.lossless import check_texts, per_cell
from orchestrator.analysis.model import fits, format_check, format_fits, model_table, window_check
from orchestrator.analysis.pairs import pair_table, slower_prompts
from orchestrator.analysis.search import format_decision, step
from orchestrator.results.records import CellRecord, machine_label
from orchestrator.results.rundir import BY_CATEGORY, MODEL, PAIRS, SUMMARY, RunDir
from orchestrator.analysis.summary import (PREFILL_TIMED, format_speedups, format_table, measured_frame,
                                           speedup_frame, summarize, unpaired_note)

from .categories import draw_category_heatmap
from orchestrator.analysis.cost import cost_frame, cost_notes
from orchestrator.analysis.placement import placement_notes
from orchestrator.common.show import printable

from .cost import draw_cost
from .names import for_charts, short, shortened
from .charts import (draw_acceptance_by_position, draw_acceptance_length, draw_charts, draw_load, draw_lossless,
                     draw_model, draw_pairs, draw_phase_rates)


@dataclass
class Report:
    summary: pd.DataFrame
    summary_path: Path
    pairs: pd.DataFrame
    pairs_path: Path
    advice: pd.DataFrame
    model: str  # the speedup model's fit, in a few lines ("" without one)
    search: str  # what the depth search did ("" for a run that was no search)
    drift: str  # n_spec 0 at the run's end against its start (analysis/drift.py): the report's first lines
    check: str  # per-request draft counts against the /metrics deltas, per window
    lossless: pd.DataFrame
    categories: CategoryView | None  # None: the run's prompts carry no category
    charts: list[Path]
    html: Path
    markdown: Path
    warnings: list[str]  # records skipped or kept as failed on reading back; each one line


def build_report(run_dir: Path, overlay=None) -> Report:
    run = RunDir(run_dir)
    requests, cells = run.request_records(), run.cell_records()
    summary = summarize(requests, cells)
    frame = measured_frame(requests)
    drifts, drift_text = checked(frame, cells, summary)
    flips = flagged(drifts)
    summary["drift_could_flip"] = [(e, n, p) in flips for e, n, p in
                                   zip(summary["engine"], summary["n_spec"], summary["prompt_set"])]
    run.write_csv(SUMMARY, summary)
    pairs = pair_table(frame, cells)
    run.write_csv(PAIRS, pairs)
    found = fits(frame, cells)
    model = model_table(found)
    run.write_csv(MODEL, model)
    check = window_check(frame, cells)
    run.write_csv("acceptance_check.csv", check)
    starts = run.server_starts()
    categories = category_view(requests, cells, starts)
    if categories is not None:
        run.write_csv(BY_CATEGORY, categories.table())
    search = "\n".join(format_decision(step(engine, grid, budget, frame, cells, None, starts.get(engine, 0)))
                       for engine, (grid, budget) in run.search_settings().items())
    checks = check_texts(requests)
    lossless = per_cell(checks)
    run.write_csv("lossless.csv", checks)
    sub = subtitle(run)
    scenario = _scenario_text(run)
    charts = _draw(run, summary, pairs, model, lossless, cells, categories, overlay)
    out = run.path / "report"
    ctx = _Context(run, summary, pairs, lossless, checks, cells, [c for c in charts if c.suffix == ".png"],
                   scenario, [printable(w) for w in run.warnings], format_fits(found), search, format_check(check), categories,
                   drift_text)
    # Never through a link (results/rundir.py); what servers and files said, with its escapes shown.
    run.write_file("report/index.html", printable(_html(ctx), lines=True))
    run.write_file("report/summary.md", printable(_markdown(ctx), lines=True))
    return Report(summary, run.path / SUMMARY, pairs, run.path / PAIRS, ctx.advice, ctx.model, ctx.search, ctx.drift,
                  ctx.check, lossless,
                  categories, charts, out / "index.html", out / "summary.md", ctx.warnings)


def _draw(run: RunDir, summary, pairs, model, lossless, cells, categories, overlay) -> list[Path]:
    """Every chart, its names in their short forms (plots/names.py)."""
    sub = subtitle(run, short_names=True)
    summary, pairs, model, lossless = (for_charts(f) for f in (summary, pairs, model, lossless))
    engines = shortened(c.engine for c in cells)
    cells = [c.model_copy(update={"engine": engines[c.engine]}) for c in cells]
    return (draw_charts(summary, sub, run.path, overlay) + draw_phase_rates(summary, sub, run.path)
            + draw_cost(summary, sub, run.path)
            + draw_pairs(pairs, summary, sub, run.path)
            + draw_load(summary, sub, run.path)
            + draw_acceptance_length(summary, sub, run.path) + draw_acceptance_by_position(cells, sub, run.path)
            + draw_model(model, sub, run.path) + draw_lossless(lossless, sub, run.path)
            + draw_category_heatmap(categories, sub, run.path))


def _scenario_text(run: RunDir) -> str:
    """scenario.toml as run; a folder without a readable one still gets its report."""
    try:
        return run.read_scenario_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        run.warnings.append(f"{run.path / 'scenario.toml'}: {why}; the report shows no scenario")
        return f"(scenario.toml: {why})"


def subtitle(run: RunDir, short_names: bool = False) -> str:
    env = run.environment()
    models = sorted({str(e.get("model", "?")) for e in env.get("engines", {}).values()})
    if short_names:  # a chart's: each name in its short form, and no more than three of them
        models = [short(m) for m in models[:3]] + ([f"{len(models) - 3} more"] if len(models) > 3 else [])
    return printable(f"model: {', '.join(models) or '?'} · machine: {short(machine_label(env), 80)}")


@dataclass
class _Context:
    run: RunDir
    summary: pd.DataFrame
    pairs: pd.DataFrame
    lossless: pd.DataFrame
    checks: pd.DataFrame
    cells: list[CellRecord]
    pngs: list[Path]
    scenario: str
    warnings: list[str]
    model: str = ""
    search: str = ""
    check: str = ""
    categories: CategoryView | None = None
    drift: str = ""

    @property
    def top(self) -> str:
        """What to run: the measured advice by prompt set, then by category, then the search's
        outcome and the model's."""
        by_category = self.categories.advice_text() if self.categories is not None else ""
        return "\n\n".join(t for t in (self.drift, format_advice(self.advice), by_category, self.search, self.model) if t)

    @cached_property
    def advice(self) -> pd.DataFrame:
        return what_to_run(self.summary, self.pairs, self.run.server_starts())

    @property
    def method_lines(self) -> list[str]:
        caches = sorted({f"{c.engine}: {c.cache or 'not recorded'}" for c in self.cells})
        kinds = sorted({c.kind for c in self.cells if c.kind in ENGINES})
        return [
            "e2e tok/s = completion tokens / (end - start), time to first token included; "
            "decode tok/s = (tokens - 1) / (end - first token). Prefill and server decode tok/s: the server's "
            "own timings (llama.cpp's prompt_per_second, predicted_per_second); where it reports none, prefill = "
            "prompt tokens / TTFT, marked †. Definitions: docs/metrics.md.",
            "Token counts are the server's, never stream chunks; acceptance per request where the stream "
            "reports drafts, else the deltas of the server's /metrics counters over each measured window (marked *).",
            *[ENGINES[kind].report_note for kind in kinds if ENGINES[kind].report_note],
            "Warm-up requests after every server start are recorded apart and never measured.",
            "95% intervals over both levels where the run has blocks: server starts (their variance pooled "
            "over the engine's cells per level and prompt set; a cell whose starts disagree beyond the others', "
            "by Cochran's test, keeps its own) and requests within them, prompts as the unit (docs/metrics.md, "
            "'Two levels'); with one block they cover requests only. A speedup whose interval includes 1.0 "
            "is marked 'no clear difference'. What to run judges its depths together (Bonferroni). "
            "Outliers are flagged, not dropped.",
            "Speedups come from request pairs: each speculative request over its twin at n_spec 0 (same prompt, "
            "repeat and concurrency). Typical = median of the pair ratios; throughput = total tokens / "
            "total seconds over the same pairs; intervals resample pairs. Independent = the old ratio of cell "
            "medians with requests resampled as if unpaired, shown for comparison.",
            *[f"Cache: {c}" for c in caches],
            *placement_notes(self.cells),
        ]

    @property
    def rerun(self) -> str:
        return f"orch sweep {self.run.path / 'scenario.toml'}"


def _markdown(ctx: _Context) -> str:
    advice = ctx.top
    lines = [f"## orch sweep `{ctx.run.path.name}`", "", f"{subtitle(ctx.run)}", "", *_md_skipped(ctx.warnings),
             *(["### What to run", "", "```", advice, "```", ""] if advice else []),
             *[f"- {m}" for m in ctx.method_lines], "",
             "```", format_table(ctx.summary), "```", "", *_md_pairs(ctx), *_md_cost(ctx), *_md_categories(ctx),
             *(["### Acceptance: per request against /metrics", "", "```", ctx.check, "```", ""] if ctx.check else []),
             "### Lossless check (temperature 0, against n_spec 0)", ""]
    lines += _md_table(ctx.lossless, ["cell_id", "checked", "identical", "share_identical"])
    div = _divergences(ctx.checks)
    if len(div):
        lines += ["", "First divergences:", ""]
        lines += _md_table(div, list(div.columns))
    outl = ctx.summary[ctx.summary["outliers"].fillna("") != ""]
    if len(outl):
        lines += ["", "Outliers (kept in the statistics, flagged):", ""]
        lines += [f"- {r.cell_id} {r.prompt_set}: {r.outliers}" for r in outl.itertuples()]
    lines += ["", f"Rerun: `{ctx.rerun}`", ""]
    return "\n".join(lines)


SLOWER_SHOWN = 25  # the report lists the slowest prompts; pairs.csv has every pair


def _md_pairs(ctx: _Context) -> list[str]:
    speedups = format_speedups(ctx.summary)
    if not speedups:
        return []
    lines = ["### Speedup from request pairs", "", "```", speedups, "```", ""]
    load = format_crossover(ctx.summary)
    lines += ["### Under load", "", "```", load, "```", ""] if load else []
    unpaired = unpaired_note(ctx.summary).strip()
    lines += [unpaired, ""] if unpaired else []
    slow, total = _slower(ctx)
    lines += ["### Prompts where speculation was slower", "", _slower_caption(len(slow), total), ""]
    return lines + _md_table(slow, list(slow.columns)) + [""] if len(slow) else lines


COST_CAPTION = ("The server's process tree (CPU seconds, resident memory), energy (RAPL or the GPUs' NVML counters) "
                "and GPU readings, sampled through each measured window off the request path; per token: each "
                "request's share of what the counters rose by while it ran, median with its 95% interval. "
                "Limit: bandwidth / bytes of weights, one stream without speculation (docs/metrics.md).")


def _md_cost(ctx: _Context) -> list[str]:
    table = cost_frame(ctx.summary)
    if table.empty:
        return []
    return (["### Cost and the hardware's limit", "", COST_CAPTION, ""] + _md_table(table, list(table.columns))
            + [""] + [f"- {n}" for n in cost_notes(ctx.summary)] + [""])


def _html_cost(ctx: _Context) -> str:
    table = cost_frame(ctx.summary)
    if table.empty:
        return ""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in cost_notes(ctx.summary))
    return (f'<h2 id="cost">Cost and the hardware\'s limit</h2><p>{html.escape(COST_CAPTION)}</p>'
            f"{table.to_html(index=False, border=0)}<ul>{notes}</ul>")


def _md_categories(ctx: _Context) -> list[str]:
    if ctx.categories is None:
        return []
    table = _by_category(ctx.categories)
    return ["### By category", "", CATEGORY_CAPTION, ""] + _md_table(table, list(table.columns)) + [""]


CATEGORY_CAPTION = ("Each category's requests across the prompt sets that hold it (summary_by_category.csv has "
                    "every column). Acceptance from per-request draft counts; speedup: the typical paired ratio "
                    "against n_spec 0, with its 95% interval.")


def _by_category(view: CategoryView) -> pd.DataFrame:
    t = view.table()
    t = t[t["concurrency"].notna()]
    return pd.DataFrame([{
        "engine": r["engine"], "n_spec": r["n_spec"], "conc": r["concurrency"], "category": r["category"],
        "sets": r["prompt_sets"], "ok / failed": f"{r['requests_ok']} / {r['requests_failed']}",
        "e2e tok/s": _num(r["e2e_tok_s_median"], "{:.1f}"), "accept": _num(r["acceptance_rate"], "{:.2f}"),
        "accept CI": _ci(r, "acceptance", "{:.2f}"), "speedup": _num(r["speedup"], "{:.2f}x"),
        "speedup CI": _ci(r, "speedup", "{:.2f}"),
        "pairs": r["requests_paired"], "verdict": r["speedup_verdict"] if isinstance(r["speedup_verdict"], str) else "-",
    } for _, r in t.sort_values(["engine", "concurrency", "category", "n_spec"]).iterrows()])


def _html_categories(ctx: _Context) -> str:
    if ctx.categories is None:
        return ""
    table = _by_category(ctx.categories).to_html(index=False, border=0, na_rep="-")
    return f'<h2 id="by-category">By category</h2><p>{html.escape(CATEGORY_CAPTION)}</p>{table}'


def _slower(ctx: _Context) -> tuple[pd.DataFrame, int]:
    slow = slower_prompts(ctx.pairs)
    return slow.head(SLOWER_SHOWN), len(slow)


def _slower_caption(shown: int, total: int) -> str:
    if not total:
        return "None: in every speculative cell, every prompt's pairs were at least as fast as n_spec 0."
    more = f" (the slowest {shown} shown; every pair is in pairs.csv)" if total > shown else ""
    return (f"{total} prompt{'s' if total != 1 else ''} whose paired ratio (median over repeats) is "
            f"below 1.0{more}. One pair carries the server's noise: look at its repeats.")


SKIPPED = ("Records skipped: some lines of this run's records could not be read back; the figures "
           "below are from the rest (rows kept as failed are counted as failed requests).")


def _md_skipped(warnings: list[str]) -> list[str]:
    if not warnings:
        return []
    return [f"**{SKIPPED}**", "", *[f"- {w}" for w in warnings], ""]


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


def _num(v, fmt: str) -> str:
    return "-" if v is None or pd.isna(v) else fmt.format(v)


def _ci(row, stem: str, fmt: str) -> str:
    lo, hi = row[f"{stem}_ci_low"], row[f"{stem}_ci_high"]
    return "-" if pd.isna(lo) or pd.isna(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def _compact(summary: pd.DataFrame) -> pd.DataFrame:
    """The report's table; summary.csv keeps every column."""
    return pd.DataFrame([{
        "engine": r["engine"], "method": "none" if r["n_spec"] == 0 else r["method"], "n_spec": r["n_spec"],
        "conc": r["concurrency"], "prompts": r["prompt_set"], "ok / failed": f"{r['requests_ok']} / {r['requests_failed']}",
        "e2e tok/s": _num(r["e2e_tok_s_median"], "{:.1f}"), "95% CI": _ci(r, "e2e_tok_s", "{:.1f}"),
        "decode tok/s": _num(r["decode_tok_s_median"], "{:.1f}"),
        "prefill tok/s": _with_ci(r, "prefill_tok_s", "{:.0f}", r["prefill_source"] != PREFILL_TIMED),
        "server decode tok/s": _with_ci(r, "server_decode_tok_s", "{:.1f}", False),
        "TTFT s": _with_ci(r, "ttft_s", "{:.3f}", False), "latency s": _with_ci(r, "latency_s", "{:.2f}", False),
        "TPOT ms": _num(r["tpot_ms_median"], "{:.1f}"), "ITL p90 ms": _num(r["itl_ms_p90"], "{:.1f}"),
        "accept": _num(r["acceptance_rate"], "{:.2f}"), "speedup": _num(r["speedup"], "{:.2f}x"),
        "speedup CI": _ci(r, "speedup", "{:.2f}"), "verdict": r["speedup_verdict"] or "-",
        "outliers": r["outliers"] or "",
    } for _, r in summary.iterrows()])


def _with_ci(r, stem: str, fmt: str, derived: bool) -> str:
    """A median with its interval; "†" marks a prefill rate derived from TTFT, not the server's."""
    text = _num(r[f"{stem}_median"], fmt)
    if text == "-":
        return text
    interval = _ci(r, stem, fmt)
    return text + (f" [{interval}]" if interval != "-" else "") + (" †" if derived else "")


def _divergences(checks: pd.DataFrame) -> pd.DataFrame:
    if checks.empty:
        return checks
    d = checks[~checks["identical"].astype(bool)]
    d = d[["cell_id", "prompt", "repeat", "first_diff_char", "first_diff_token",
           "baseline_snippet", "speculative_snippet"]].head(20).astype(object)
    return d.where(d.notna(), "-")


def _html(ctx: _Context) -> str:
    esc = html.escape
    imgs = "\n".join(f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,'
                     f'{base64.b64encode(p.read_bytes()).decode()}"></figure>' for p in ctx.pngs)
    table = _compact(ctx.summary).to_html(index=False, na_rep="-", border=0)
    pairs = _html_pairs(ctx)
    lossless = ctx.lossless.to_html(index=False, float_format=lambda v: f"{v:.2f}", border=0)
    div = _divergences(ctx.checks)
    div_html = div.to_html(index=False, border=0, na_rep="-") if len(div) else "<p>No divergence: every checked output was identical.</p>"
    env = json.dumps(ctx.run.environment(), indent=2)
    return _PAGE.format(
        title=esc(ctx.run.path.name), subtitle=esc(subtitle(ctx.run)),
        method="".join(f"<li>{esc(m)}</li>" for m in ctx.method_lines),
        check=f'<h2 id="acceptance-check">Acceptance: per request against /metrics</h2><pre>{esc(ctx.check)}</pre>'
        if ctx.check else "",
        images=imgs, summary=table, pairs=pairs + _html_cost(ctx) + _html_categories(ctx), lossless=lossless, advice=_html_advice(ctx), divergences=div_html,
        env=esc(env), scenario=esc(ctx.scenario), rerun=esc(ctx.rerun), skipped=_html_skipped(ctx.warnings))


def _html_advice(ctx: _Context) -> str:
    text = ctx.top
    return f'<h2 id="what-to-run">What to run</h2><pre>{html.escape(text)}</pre>' if text else ""


def _html_pairs(ctx: _Context) -> str:
    view = speedup_frame(ctx.summary)
    if view.empty:
        return ""
    esc = html.escape
    slow, total = _slower(ctx)
    unpaired = unpaired_note(ctx.summary).strip()
    slow_html = slow.to_html(index=False, border=0, float_format=lambda v: f"{v:.2f}") if len(slow) else ""
    load = format_crossover(ctx.summary)
    return (f'<h2 id="pairs">Speedup from request pairs</h2>{view.to_html(index=False, border=0)}'
            + (f"<p>{esc(unpaired)}</p>" if unpaired else "")
            + (f'<h3 id="load">Under load</h3><pre>{esc(load)}</pre>' if load else "")
            + f'<h3 id="slower">Prompts where speculation was slower</h3><p>{esc(_slower_caption(len(slow), total))}</p>'
            + slow_html)


def _html_skipped(warnings: list[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f'<div id="records-skipped"><h2>Records skipped</h2><p>{html.escape(SKIPPED)}</p><ul>{items}</ul></div>'



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
{skipped}
{advice}
<h2>How it was measured</h2><ul>{method}</ul>
<h2>Charts</h2>
{images}
<h2 id="summary">Summary</h2>
{summary}
{pairs}
{check}
<h2>Lossless check (temperature 0, against n_spec 0)</h2>
{lossless}
{divergences}
<h2>Rerun</h2><pre>{rerun}</pre>
<h2>Environment</h2><pre>{env}</pre>
<h2>Scenario as run</h2><pre>{scenario}</pre>
</body></html>
"""
