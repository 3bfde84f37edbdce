"""One analysis of a run folder: the records read once, every figure computed once, every CSV
written, and the report's ordered sections returned for the renderers to lay out.

    analyze(run_dir) -> Findings
        .summary, .pairs, .model, .checks, .lossless, .categories, .cells   the frames the charts draw
        .sections                                                             what the report says, in order

The terminal (plots/terminal.py), Markdown and HTML (plots/report.py) outputs are three layouts
of the same sections: each says a thing in the words given here, so the three cannot disagree.
A section holds fixed-width text (the terminal prints it, Markdown fences it, HTML puts it in
<pre>), a table (HTML draws it; Markdown too where the section has no text), a caption and notes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from engines import ENGINES

from orchestrator.analysis.categories import CategoryView, category_view
from orchestrator.analysis.cost import cost_frame, cost_notes
from orchestrator.analysis.drift import checked, flagged
from orchestrator.analysis.load import format_crossover
from orchestrator.analysis.lossless import check_texts, per_cell
from orchestrator.analysis.model import fits, format_check, format_fits, model_table, window_check
from orchestrator.analysis.pairs import PAIRED, pair_table, slower_prompts
from orchestrator.analysis.side_by_side import placement_notes
from orchestrator.analysis.recommend import format_advice, what_to_run
from orchestrator.analysis.reference import HARDWARE, Setup, published_for
from orchestrator.analysis.search import format_decision, step
from orchestrator.analysis.summary import (METRICS_SOURCE, PREFILL_TIMED, format_speedups, format_table, measured_frame,
                                           speedup_frame, summarize, unpaired_note)
from orchestrator.common.show import printable
from orchestrator.types.records import CellRecord, machine_label
from orchestrator.results.rundir import BY_CATEGORY, MODEL, PAIRS, SUMMARY, RunDir

# What the renderers may know of the analysis besides the findings (they import nothing else of it).
__all__ = ["analyze", "Findings", "Section", "CategoryView", "METRICS_SOURCE", "PAIRED", "HARDWARE", "Setup",
           "TERMINAL", "MARKDOWN", "HTML"]

TERMINAL, MARKDOWN, HTML = "terminal", "markdown", "html"
EVERYWHERE = frozenset({TERMINAL, MARKDOWN, HTML})
REPORT = frozenset({MARKDOWN, HTML})


@dataclass(frozen=True)
class Section:
    key: str  # the section's anchor in the HTML, and how tests find it
    title: str
    text: str = ""  # fixed-width text
    table: pd.DataFrame | None = None
    caption: str = ""
    notes: tuple[str, ...] = ()
    outputs: frozenset[str] = EVERYWHERE  # which renderers show it
    headed: bool = True  # whether Markdown shows the title (its opening blocks have none)
    strong: bool = False  # a caption that must not be missed (records skipped)


@dataclass
class Findings:
    run: RunDir
    title: str
    subtitle: str
    summary: pd.DataFrame
    pairs: pd.DataFrame
    model: pd.DataFrame
    checks: pd.DataFrame  # every speculative output against n_spec 0's (lossless.csv)
    lossless: pd.DataFrame  # the same per cell
    categories: CategoryView | None  # None: the run's prompts carry no category
    cells: list[CellRecord]
    sections: list[Section]
    warnings: list[str]  # records skipped or kept as failed on reading back; each one line
    written: dict[str, Path] = field(default_factory=dict)  # CSV name -> its path
    # With published=True: the published means matching each engine (its name, the means) for
    # the charts' overlay, and the line saying what matched.
    published: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    published_note: str = ""
    models: tuple[str, ...] = ()  # the engines' model names, sorted: the subtitle's, in full
    machine: str = ""  # environment.json's machine label

    @property
    def failed(self) -> bool:
        """Whether any request failed: the sweep's exit code says so."""
        return bool((self.summary["requests_failed"].fillna(0) > 0).any())

    def section(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.key == key), None)


def analyze(run_dir: Path, published: bool = False) -> Findings:
    """Read the run's records once, compute everything, write every CSV, say it in sections;
    `published`: also match the published figures (`orch report --reference published`)."""
    run = RunDir(run_dir)
    matched, note = published_for(run.environment()) if published else ([], "")
    requests, cells = run.request_records(), run.cell_records()
    summary = summarize(requests, cells)
    frame = measured_frame(requests)
    drifts, drift_text = checked(frame, cells, summary)
    flips = flagged(drifts)
    summary["drift_could_flip"] = [(e, n, p) in flips for e, n, p in
                                   zip(summary["engine"], summary["n_spec"], summary["prompt_set"], strict=True)]
    written = {SUMMARY: run.write_csv(SUMMARY, summary)}
    pairs = pair_table(frame, cells)
    written[PAIRS] = run.write_csv(PAIRS, pairs)
    found = fits(frame, cells)
    model = model_table(found)
    written[MODEL] = run.write_csv(MODEL, model)
    check = window_check(frame, cells)
    written["acceptance_check.csv"] = run.write_csv("acceptance_check.csv", check)
    starts = run.server_starts()
    categories = category_view(requests, cells, starts)
    if categories is not None:
        written[BY_CATEGORY] = run.write_csv(BY_CATEGORY, categories.table())
    search = "\n".join(format_decision(replace(step(engine, grid, budget, frame, cells, None, starts.get(engine, 0)),
                                                allowed=allowed, blocks=blocks))
                       for engine, (grid, budget, allowed, blocks) in run.search_settings().items())
    checks = check_texts(requests)
    lossless = per_cell(checks)
    written["lossless.csv"] = run.write_csv("lossless.csv", checks)
    scenario = _scenario_text(run)
    models, machine = models_and_machine(run)  # before the warnings are taken: it reads environment.json
    title, sub = f"orch sweep `{run.path.name}`", printable(f"model: {', '.join(models) or '?'} · machine: {machine}")
    advice = what_to_run(summary, pairs, starts)
    by_category = categories.advice_text() if categories is not None else ""
    top = "\n\n".join(t for t in (drift_text, format_advice(advice), by_category, search, format_fits(found)) if t)
    said = _Said(run, summary, pairs, lossless, checks, cells, categories, top, format_check(check), scenario,
                 [printable(w) for w in run.warnings])
    return Findings(run, title, sub, summary, pairs, model, checks, lossless,
                    categories, cells, said.sections(), said.warnings, written, matched, note, models, machine)


def models_and_machine(run: RunDir) -> tuple[tuple[str, ...], str]:
    """The engines' model names (sorted, each once) and the machine's label, from environment.json."""
    env = run.environment()
    return tuple(sorted({str(e.get("model", "?")) for e in env.get("engines", {}).values()})), machine_label(env)


def _scenario_text(run: RunDir) -> str:
    """scenario.toml as run; a folder without a readable one still gets its report."""
    try:
        return run.read_scenario_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        run.warnings.append(f"{run.path / 'scenario.toml'}: {why}; the report shows no scenario")
        return f"(scenario.toml: {why})"


SKIPPED = ("Records skipped: some lines of this run's records could not be read back; the figures "
           "below are from the rest (rows kept as failed are counted as failed requests).")
COST_CAPTION = ("The server's process tree (CPU seconds, resident memory), energy (RAPL or the GPUs' NVML counters) "
                "and GPU readings, sampled through each measured window off the request path; per token: each "
                "request's share of what the counters rose by while it ran, median with its 95% interval. "
                "Limit: bandwidth / bytes of weights, one stream without speculation (docs/metrics.md).")
CATEGORY_CAPTION = ("Each category's requests across the prompt sets that hold it (summary_by_category.csv has "
                    "every column). Acceptance from per-request draft counts; speedup: the typical paired ratio "
                    "against n_spec 0, with its 95% interval.")
SLOWER_SHOWN = 25  # the report lists the slowest prompts; pairs.csv has every pair


@dataclass
class _Said:
    """The run's figures, and the report's sections that put them into words."""

    run: RunDir
    summary: pd.DataFrame
    pairs: pd.DataFrame
    lossless: pd.DataFrame
    checks: pd.DataFrame
    cells: list[CellRecord]
    categories: CategoryView | None
    top: str  # what to run: drift, advice by prompt set and by category, the search, the model
    check: str
    scenario: str
    warnings: list[str]

    def sections(self) -> list[Section]:
        return [s for s in (
            self._skipped(),
            # Over an empty run the terminal opens with the summary's one line, not drift's.
            Section("what-to-run", "What to run", self.top,
                    outputs=EVERYWHERE if len(self.summary) else REPORT) if self.top else None,
            Section("method", "How it was measured", notes=tuple(self.method_lines()), outputs=REPORT, headed=False),
            Section("charts", "Charts", outputs=frozenset({HTML})),
            Section("summary", "Summary", format_table(self.summary), _compact(self.summary), headed=False),
            # Cells side by side shared a host: that warning belongs beside the figures, on every output.
            self._placement(),
            *self._pairs(),
            self._cost(),
            self._categories(),
            Section("acceptance-check", "Acceptance: per request against /metrics", self.check) if self.check else None,
            *self._lossless(),
            Section("rerun", "Rerun", caption=f"Rerun: `{self.rerun}`", outputs=REPORT, headed=False),
            Section("environment", "Environment", json.dumps(self.run.environment(), indent=2), outputs=frozenset({HTML})),
            Section("scenario", "Scenario as run", self.scenario, outputs=frozenset({HTML})),
        ) if s is not None]

    @property
    def rerun(self) -> str:
        return f"orch sweep {self.run.path / 'scenario.toml'}"

    def _placement(self) -> Section | None:
        notes = placement_notes(self.cells)
        return Section("placement", "Where the cells ran", notes=tuple(notes), headed=False) if notes else None

    def _skipped(self) -> Section | None:
        if not self.warnings:
            return None
        return Section("records-skipped", "Records skipped", caption=SKIPPED, notes=tuple(self.warnings), outputs=REPORT,
                       headed=False, strong=True)

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
        ]

    def _pairs(self) -> list[Section]:
        speedups = format_speedups(self.summary)
        if not speedups:
            return []
        load = format_crossover(self.summary)
        unpaired = unpaired_note(self.summary).strip()
        slow = slower_prompts(self.pairs)
        shown = slow.head(SLOWER_SHOWN)
        return [s for s in (
            Section("pairs", "Speedup from request pairs", speedups, speedup_frame(self.summary)),
            Section("load", "Under load", load) if load else None,
            Section("unpaired", "Unpaired", caption=unpaired, headed=False) if unpaired else None,
            Section("slower", "Prompts where speculation was slower", caption=_slower_caption(len(shown), len(slow)),
                    table=shown if len(shown) else None, outputs=REPORT),
        ) if s is not None]

    def _cost(self) -> Section | None:
        table = cost_frame(self.summary)
        if table.empty:
            return None
        return Section("cost", "Cost and the hardware's limit", caption=COST_CAPTION, table=table, notes=tuple(cost_notes(self.summary)))

    def _categories(self) -> Section | None:
        if self.categories is None:
            return None
        return Section("by-category", "By category", caption=CATEGORY_CAPTION, table=_by_category(self.categories),
                       outputs=REPORT)

    def _lossless(self) -> list[Section]:
        table = self.lossless[["cell_id", "checked", "identical", "share_identical"]] if len(self.lossless) \
            else pd.DataFrame(columns=["cell_id", "checked", "identical", "share_identical"])
        div = _divergences(self.checks)
        outl = self.summary[self.summary["outliers"].fillna("") != ""]
        return [s for s in (
            Section("lossless", "Lossless check (temperature 0, against n_spec 0)", table=table, outputs=REPORT),
            Section("divergences", "First divergences", caption="First divergences:", table=div, outputs=REPORT,
                    headed=False) if len(div) else None,
            Section("outliers", "Outliers", caption="Outliers (kept in the statistics, flagged):", outputs=REPORT,
                    notes=tuple(f"{r.cell_id} {r.prompt_set}: {r.outliers}" for r in outl.itertuples()),
                    headed=False) if len(outl) else None,
        ) if s is not None]


def _slower_caption(shown: int, total: int) -> str:
    if not total:
        return "None: in every speculative cell, every prompt's pairs were at least as fast as n_spec 0."
    more = f" (the slowest {shown} shown; every pair is in pairs.csv)" if total > shown else ""
    return (f"{total} prompt{'s' if total != 1 else ''} whose paired ratio (median over repeats) is "
            f"below 1.0{more}. One pair carries the server's noise: look at its repeats.")


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


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None or pd.isna(v) else fmt.format(v)


def _ci(row: pd.Series, stem: str, fmt: str) -> str:
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


def _with_ci(r: pd.Series, stem: str, fmt: str, derived: bool) -> str:
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
