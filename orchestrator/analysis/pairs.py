"""Request pairs: each speculative request beside its twin in the same engine's n_spec 0 cell
(same prompt set, prompt, repeat and concurrency), and the speedups computed from the pairs.

Most of the spread between requests is the prompts' own (a long answer or a short one, text an
n-gram pool can copy or cannot). A ratio per pair cancels it, so an interval over pairs shows
what speculation changes, not how much the prompts differ. Formulas: docs/metrics.md.

A speculative request without a usable twin is never dropped silently: it is a row of the pair
table with the reason, and the summary counts it (`requests_unpaired`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd

from orchestrator.analysis import spread
from orchestrator.analysis.stats import FloatArray, Statistic, median, paired_ci
from orchestrator.types.records import CellRecord

Row = dict[str, Any]  # a request as a measured frame's record, or a row of the pair table
TwinKey = tuple[Hashable, ...]  # a request's TWIN values
GroupKey = tuple[str, int, str]  # (cell, concurrency, prompt set)

TWIN = ["engine", "concurrency", "block", "prompt_set", "prompt_id", "repeat"]
CELL = ["cell_id", "engine", "method", "n_spec", "concurrency", "prompt_set"]

PAIRED = "paired"
NO_BASELINE = "no baseline request"  # the n_spec 0 cell never sent this prompt and repeat
AMBIGUOUS = "ambiguous: two n_spec 0 starts of this engine sent this request, and their times are not recorded"
INCOMPLETE = "no ratio: a side has no token count, times or tokens per second"
MIN_PAIRS = 6  # interval_of_pairs (depth against depth): fewer pairs, no interval
MIN_PROMPTS = 2  # a speedup's interval needs prompts that differ: one prompt, a ratio but no verdict
COLUMNS = CELL + ["block", "prompt_id", "repeat", "status", "ratio", "speculative_tok_s", "baseline_tok_s",
                  "speculative_tokens", "baseline_tokens", "speculative_s", "baseline_s", "baseline_cell_id"]


def baseline_index(df: pd.DataFrame) -> dict[TwinKey, list[Row]]:
    """The n_spec 0 requests of each twin key (TWIN), from a measured frame: one per start of the
    baseline in that block (a resumed start or a second baseline start adds one)."""
    base = df[df["n_spec"] == 0]
    index: dict[TwinKey, list[Row]] = {}
    for key, rec in zip(base[TWIN].itertuples(index=False), base.to_dict("records"), strict=True):
        index.setdefault(tuple(key), []).append(rec)
    return index


def pair_table(df: pd.DataFrame, cells: Iterable[CellRecord] = ()) -> pd.DataFrame:
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


def nearest(rec: Row, candidates: list[Row]) -> Row | None:
    """The candidate sent nearest in time to `rec` (wall clock: comparable across a resume);
    None when there is none, or several and a time is missing."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    t = rec.get("wall_start")
    times = [c.get("wall_start") for c in candidates]
    if not _known(t) or not all(_known(x) for x in times):
        return None
    return min(candidates, key=lambda c: abs(c["wall_start"] - t))


def _known(v: Any) -> bool:
    return v is not None and not pd.isna(v)


def _pair(rec: Row, key: TwinKey, base: dict[TwinKey, list[Row]]) -> Row:
    found = base.get(key, [])
    twin = nearest(rec, found)
    row = {k: rec[k] for k in CELL + ["block", "prompt_id", "repeat"]}
    row.update(speculative_tok_s=rec.get("e2e_tok_s"), speculative_tokens=rec.get("completion_tokens"),
               speculative_s=_seconds(rec))
    if twin is not None:
        row.update(baseline_tok_s=twin.get("e2e_tok_s"), baseline_tokens=twin.get("completion_tokens"),
                   baseline_s=_seconds(twin), baseline_cell_id=twin["cell_id"])
    row["status"] = AMBIGUOUS if found and twin is None else _status(rec, twin)
    if row["status"] == PAIRED:
        row["ratio"] = row["speculative_tok_s"] / row["baseline_tok_s"]
    return row


def _status(rec: Row, twin: Row | None) -> str:
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


def _seconds(rec: Row) -> float | None:
    start, end = rec.get("t_start"), rec.get("t_end")
    return end - start if rec["ok"] and start is not None and end is not None else None


def _positive(v: Any) -> bool:
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
    blocks: int = 0  # server starts (blocks) the pairs came from
    interval_covers: str | None = None  # spread.BOTH, or spread.REQUESTS_ONLY with one block
    speedup_se_starts: float | None = None  # relative standard error of the typical speedup from starts...
    speedup_se_requests: float | None = None  # ...and from requests within them (spread.py)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def matched_ratios(a: pd.Series, b: pd.Series) -> pd.Series:
    """a / b for each index key both have (request by request), NaN and b <= 0 dropped; a key
    repeated (merged records) counts once, its last value."""
    a, b = (pd.to_numeric(s, errors="coerce") for s in (a, b))
    both = pd.concat([a[~a.index.duplicated(keep="last")], b[~b.index.duplicated(keep="last")]],
                     axis=1, join="inner").dropna().astype(float)
    both = both[both.iloc[:, 1] > 0]
    return both.iloc[:, 0] / both.iloc[:, 1]


def by_group(pairs: pd.DataFrame) -> dict[GroupKey, pd.DataFrame]:
    """The paired rows of each (cell, concurrency, prompt set), with the columns spread.py reads."""
    ok = pairs[pairs["status"] == PAIRED]
    if ok.empty:
        return {}
    ok = ok.assign(prompt=ok["prompt_id"], block=pd.to_numeric(ok["block"]).fillna(0).astype(int))
    return {k: g for k, g in ok.groupby(["cell_id", "concurrency", "prompt_set"], sort=False)}


SIDES = ["speculative_tokens", "speculative_s", "baseline_tokens", "baseline_s"]


def paired_speedups(pairs: pd.DataFrame, confidence: float = spread.CONFIDENCE) -> dict[GroupKey, PairedSpeedup]:
    """{(cell, concurrency, prompt set): its speedups}, with two-level intervals whose start
    variance is pooled over the engine's cells at each concurrency and prompt set (spread.py)."""
    groups = by_group(pairs)
    engine = {k: g["engine"].iloc[0] for k, g in groups.items()}
    pool = lambda k: (engine[k], k[1], k[2])  # noqa: E731 - the same engine, concurrency and prompt set
    typical = spread.intervals(groups, spread.nanmedian, ["ratio"], pool, confidence)
    flows = spread.intervals(groups, spread.throughput, SIDES, pool, confidence)
    unpaired = pairs[pairs["status"] != PAIRED].groupby(["cell_id", "concurrency", "prompt_set"]).size().to_dict() \
        if len(pairs) else {}
    out = {k: PairedSpeedup(requests_unpaired=int(n)) for k, n in unpaired.items()}
    for k, g in groups.items():
        out[k] = _speedup(g, typical[k], flows[k], int(unpaired.get(k, 0)))
    return out


def _speedup(ok: pd.DataFrame, typical: spread.Interval, flow: spread.Interval, unpaired: int) -> PairedSpeedup:
    ratios = ok["ratio"].to_numpy(dtype=float)
    return PairedSpeedup(
        requests_paired=len(ok), requests_unpaired=unpaired,
        speedup=typical.estimate, speedup_ci_low=typical.low, speedup_ci_high=typical.high,
        speedup_verdict=spread.verdict(typical),
        throughput_speedup=flow.estimate, throughput_ci_low=flow.low, throughput_ci_high=flow.high,
        throughput_verdict=spread.verdict(flow),
        pair_ratio_min=float(ratios.min()), pair_ratio_max=float(ratios.max()),
        pairs_slower=int((ratios < 1.0).sum()), blocks=int(ok["block"].nunique()), interval_covers=typical.covers,
        speedup_se_starts=typical.se_starts, speedup_se_requests=typical.se_requests)


def interval_of_pairs(statistic: Statistic, *columns: FloatArray) -> tuple[float | None, float | None]:
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
