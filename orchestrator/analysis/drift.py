"""The drift check: n_spec 0 measured at the start of the run and again at its end.

With workload.blocks >= 2 each engine's baseline opens the first block and closes the last
(sweep/runner.plan_cells). Its requests at the two starts pair by prompt and repeat; the median
of last/first, with a prompts-as-unit interval (spread.py, one block: requests only), is the
drift. Drift whose interval excludes 1 is said in the first lines of the report, and every
speedup verdict it could flip is named: a "faster" whose lower bound lies within the drift of 1,
or a "slower" whose upper bound does. Blocks in a random order spread drift over every depth
alike, so it widens intervals rather than biasing them; a verdict this close to 1 rests on
less than the drift moved the machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from orchestrator.analysis import spread
from orchestrator.analysis.pairs import matched_ratios
from orchestrator.analysis.stats import ratio_text
from orchestrator.types.records import CellRecord

KEY = ["prompt_set", "prompt_id", "repeat"]


@dataclass(frozen=True)
class Flip:
    """A speedup verdict that a found drift could flip."""

    n_spec: int
    prompt_set: str
    text: str  # "n_spec 8 on seeds (faster, 1.03x [1.01-1.20])"


@dataclass
class Drift:
    engine: str
    concurrency: int
    first_block: int
    last_block: int
    minutes: float  # from the first baseline start to the last
    ratio: float | None  # last / first, e2e tok/s, median over request pairs
    low: float | None
    high: float | None
    flips: list[Flip] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.low is not None and self.high is not None and not (self.low <= 1.0 <= self.high)


@dataclass(frozen=True)
class _Start:
    """A start of an engine's baseline whose block and time were recorded: drift needs both."""

    engine: str
    block: int
    started_at: float


def _baseline_starts(cells: list[CellRecord]) -> list[_Start]:
    return [_Start(c.engine, c.block, c.started_at) for c in cells
            if c.n_spec == 0 and c.block is not None and c.started_at is not None]


def drift(df: pd.DataFrame, cells: list[CellRecord], summary: pd.DataFrame) -> list[Drift]:
    """One Drift per engine and concurrency whose baseline ran in two or more blocks."""
    out = []
    base = _baseline_starts(cells)
    for engine in sorted({c.engine for c in base}):
        mine = sorted((c for c in base if c.engine == engine), key=lambda c: c.started_at)
        if len({c.block for c in mine}) < 2:
            continue
        first, last = mine[0], mine[-1]
        rows = df[(df["engine"] == engine) & (df["n_spec"] == 0) & df["ok"].astype(bool)] if len(df) else df
        for conc in sorted(set(rows["concurrency"])) if len(rows) else []:
            at = rows[rows["concurrency"] == conc]
            out.append(_one(engine, int(conc), first, last, at, summary))
    return out


def _one(engine: str, conc: int, first: _Start, last: _Start, at: pd.DataFrame, summary: pd.DataFrame) -> Drift:
    def rates(block: int) -> pd.Series:
        return at[at["block"] == block].set_index(KEY)["e2e_tok_s"]

    ratios = matched_ratios(rates(last.block), rates(first.block))
    d = Drift(engine, conc, int(first.block), int(last.block), round((last.started_at - first.started_at) / 60, 1),
              None, None, None)
    if ratios.empty:
        return d
    frame = pd.DataFrame({"ratio": ratios.to_numpy(), "block": 0,
                          "prompt": [f"{s}/{p}" for s, p, _ in ratios.index]})
    iv = spread.interval(spread.spread_of(frame, spread.nanmedian, ["ratio"]), spread.StartVariance(0.0, 0))
    d.ratio, d.low, d.high = iv.estimate, iv.low, iv.high
    if d.found and d.ratio is not None:  # a found drift has its estimate
        d.flips = _flips(summary, engine, conc, abs(math.log(d.ratio)))
    return d


def _flips(summary: pd.DataFrame, engine: str, conc: int, size: float) -> list[Flip]:
    rows = summary[(summary["engine"] == engine) & (summary["concurrency"] == conc) & (summary["n_spec"] > 0)]
    out = []
    for _, r in rows.iterrows():
        low, high = r["speedup_ci_low"], r["speedup_ci_high"]
        v = r["speedup_verdict"]
        near = (v == "faster" and low < math.exp(size)) or (v == "slower" and high > math.exp(-size))
        if near:
            n = int(r["n_spec"])
            out.append(Flip(n, r["prompt_set"], f"n_spec {n} on {r['prompt_set']} ({v}, {ratio_text(r['speedup'], low, high)})"))
    return out


def flagged(drifts: list[Drift]) -> set[tuple[str, int, str]]:
    """(engine, n_spec, prompt set) of every verdict a found drift could flip."""
    return {(d.engine, f.n_spec, f.prompt_set) for d in drifts for f in d.flips}


def checked(df: pd.DataFrame, cells: list[CellRecord], summary: pd.DataFrame) -> tuple[list[Drift], str]:
    """The run's drifts and the report's first lines about them."""
    blocks = 1 + max((c.block or 0 for c in cells), default=0)
    found = drift(df, cells, summary)
    return found, format_drift(found, blocks)


def format_drift(drifts: list[Drift], blocks: int) -> str:
    """The report's first lines about drift, for a run of `blocks` blocks."""
    if blocks < 2:
        return ("drift: not measured (one block: n_spec 0 ran once); intervals cover requests only, and the "
                "run-to-run spread was not measured: set workload.blocks = 2 or more")
    lines = []
    for d in drifts:
        what = ratio_text(d.ratio, d.low, d.high)
        where = (f"{d.engine} at c={d.concurrency}: n_spec 0 at the end of the run (block {d.last_block + 1}) over "
                 f"its start (block {d.first_block + 1}), {d.minutes} min apart: {what}")
        if d.ratio is None:
            lines.append(f"drift: {where}: no request pairs to compare")
        elif d.found:
            flips = "; verdicts it could flip: " + "; ".join(f.text for f in d.flips) if d.flips else "; it flips no verdict"
            lines.append(f"DRIFT: {where}, beyond its interval{flips}")
        else:
            lines.append(f"drift: {where}, within its interval")
    return "\n".join(lines)
