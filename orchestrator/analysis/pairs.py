"""Request pairs: each speculative request beside its twin in the same engine's n_spec 0 cell
(same prompt set, prompt, repeat and concurrency), and the speedups computed from the pairs.

Most of the spread between requests is the prompts' own (a long answer or a short one, text an
n-gram pool can copy or cannot). A ratio per pair cancels it, so an interval over pairs shows
what speculation changes, not how much the prompts differ. Formulas: docs/metrics.md.

A speculative request without a usable twin is never dropped silently: it is a row of the pair
table with the reason, and the summary counts it (`requests_unpaired`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from orchestrator.analysis.stats import median, paired_ci, throughput_ratio, verdict

TWIN = ["engine", "concurrency", "prompt_set", "prompt_id", "repeat"]
CELL = ["cell_id", "engine", "method", "n_spec", "concurrency", "prompt_set"]

PAIRED = "paired"
NO_BASELINE = "no baseline request"  # the n_spec 0 cell never sent this prompt and repeat
AMBIGUOUS = "ambiguous: two n_spec 0 cells of this engine sent this request"
INCOMPLETE = "no ratio: a side has no token count, times or tokens per second"
MIN_PAIRS = 6  # fewer: a ratio, but no interval and no verdict (see interval_of_pairs)
COLUMNS = CELL + ["prompt_id", "repeat", "status", "ratio", "speculative_tok_s", "baseline_tok_s",
                  "speculative_tokens", "baseline_tokens", "speculative_s", "baseline_s", "baseline_cell_id"]


def baseline_index(df: pd.DataFrame) -> dict[tuple, dict | None]:
    """The n_spec 0 request of each twin key (TWIN), from a measured frame. A key that two n_spec 0
    cells of one engine both sent maps to None: which one is the twin cannot be told."""
    base = df[df["n_spec"] == 0]
    index: dict[tuple, dict | None] = {}
    for key, rec in zip(base[TWIN].itertuples(index=False), base.to_dict("records")):
        index[tuple(key)] = None if tuple(key) in index else rec
    return index


def pair_table(df: pd.DataFrame, cells=()) -> pd.DataFrame:
    """One row per measured speculative request of an engine that has an n_spec 0 cell (in `cells`,
    the run's CellRecords, even one that never sent a request, or in the requests)."""
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    base = baseline_index(df)
    engines = set(df.loc[df["n_spec"] == 0, "engine"]) | {c.engine for c in cells if c.n_spec == 0}
    spec = df[(df["n_spec"] > 0) & df["engine"].isin(engines)]
    rows = [_pair(rec, tuple(rec[k] for k in TWIN), base) for rec in spec.to_dict("records")]
    out = pd.DataFrame(rows, columns=COLUMNS)
    return out.astype({"speculative_tokens": "Int64", "baseline_tokens": "Int64"})


def _pair(rec: dict, key: tuple, base: dict) -> dict:
    twin = base.get(key)
    row = {k: rec[k] for k in CELL + ["prompt_id", "repeat"]}
    row.update(speculative_tok_s=rec.get("e2e_tok_s"), speculative_tokens=rec.get("completion_tokens"),
               speculative_s=_seconds(rec))
    if twin is not None:
        row.update(baseline_tok_s=twin.get("e2e_tok_s"), baseline_tokens=twin.get("completion_tokens"),
                   baseline_s=_seconds(twin), baseline_cell_id=twin["cell_id"])
    row["status"] = AMBIGUOUS if key in base and twin is None else _status(rec, twin)
    if row["status"] == PAIRED:
        row["ratio"] = row["speculative_tok_s"] / row["baseline_tok_s"]
    return row


def _status(rec: dict, twin: dict | None) -> str:
    if twin is None:
        return NO_BASELINE
    failed = [side for side, r in (("speculative", rec), ("baseline", twin)) if not r["ok"]]
    if failed:
        return " and ".join(failed) + " request failed"
    # 0 tokens, or a record read back without its rate, count or times: no ratio and no throughput
    needed = [r.get(f) for r in (rec, twin) for f in ("e2e_tok_s", "completion_tokens")]
    if not all(_positive(v) for v in needed + [_seconds(rec), _seconds(twin)]):
        return INCOMPLETE
    return PAIRED


def _seconds(rec: dict) -> float | None:
    start, end = rec.get("t_start"), rec.get("t_end")
    return end - start if rec["ok"] and start is not None and end is not None else None


def _finite(v) -> float | None:
    """A float, or None for NaN and infinity (a record read back without its times)."""
    return float(v) if np.isfinite(v) else None


def _positive(v) -> bool:
    return v is not None and not pd.isna(v) and v > 0


@dataclass
class PairedSpeedup:
    """One speculative cell's speedups at one concurrency and prompt set, from its pairs."""

    requests_paired: int = 0
    requests_unpaired: int = 0
    speedup: float | None = None  # typical request: median of the paired ratios
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None
    speedup_verdict: str | None = None
    throughput_speedup: float | None = None  # sum of tokens / sum of seconds, over the same pairs
    throughput_ci_low: float | None = None
    throughput_ci_high: float | None = None
    throughput_verdict: str | None = None
    pair_ratio_min: float | None = None
    pair_ratio_max: float | None = None
    pairs_slower: int = 0  # pairs whose speculative request was slower than its twin

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def paired_speedup(pairs: pd.DataFrame) -> PairedSpeedup:
    """The aggregates of one group of pair rows (statuses other than paired are only counted)."""
    ok = pairs[pairs["status"] == PAIRED]
    out = PairedSpeedup(requests_paired=len(ok), requests_unpaired=len(pairs) - len(ok))
    if ok.empty:
        return out
    ratios = ok["ratio"].to_numpy(dtype=float)
    sides = [ok[c].to_numpy(dtype=float) for c in
             ("speculative_tokens", "speculative_s", "baseline_tokens", "baseline_s")]
    out.speedup = _finite(median(ratios))
    out.speedup_ci_low, out.speedup_ci_high = interval_of_pairs(median, ratios)
    out.speedup_verdict = verdict(out.speedup_ci_low, out.speedup_ci_high)
    out.throughput_speedup = _finite(throughput_ratio(*sides))
    out.throughput_ci_low, out.throughput_ci_high = interval_of_pairs(throughput_ratio, *sides)
    out.throughput_verdict = verdict(out.throughput_ci_low, out.throughput_ci_high)
    out.pair_ratio_min, out.pair_ratio_max = float(ratios.min()), float(ratios.max())
    out.pairs_slower = int((ratios < 1.0).sum())
    return out


def interval_of_pairs(statistic, *columns) -> tuple[float | None, float | None]:
    """The pair bootstrap's interval, from MIN_PAIRS pairs on. With 5 pairs a resample draws the
    smallest ratio three times or more with chance 5.8% (> 2.5%), so the lower bound of the median
    would be that one request's ratio: a verdict would hang on a single pair."""
    if len(columns[0]) < MIN_PAIRS:
        return None, None
    return paired_ci(statistic, *columns)


def slower_prompts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Prompts whose speculative requests were slower than their twins: the median of a
    prompt's paired ratios (over its repeats) below 1.0, slowest first."""
    ok = pairs[pairs["status"] == PAIRED]
    cols = ["cell_id", "concurrency", "prompt_set", "prompt_id", "pairs", "ratio", "ratios",
            "baseline_tok_s", "speculative_tok_s"]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (cell, conc, prompts, pid), g in ok.groupby(["cell_id", "concurrency", "prompt_set", "prompt_id"], sort=False):
        r = median(g["ratio"].to_numpy(dtype=float))
        if r < 1.0:
            rows.append({"cell_id": cell, "concurrency": conc, "prompt_set": prompts, "prompt_id": pid,
                         "pairs": len(g), "ratio": r,
                         "ratios": ", ".join(f"{v:.2f}" for v in g["ratio"]),
                         "baseline_tok_s": float(g["baseline_tok_s"].median()),
                         "speculative_tok_s": float(g["speculative_tok_s"].median())})
    return pd.DataFrame(rows, columns=cols).sort_values("ratio", ignore_index=True)
