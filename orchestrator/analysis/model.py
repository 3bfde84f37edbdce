"""The speedup model: tok/s at every depth from a few measured cells, and why a depth wins.

Per engine and concurrency level, over every prompt set of the cell (the /metrics window that
gives the per-position counters covers them all):

    p_i      share of drafts whose first i+1 tokens were all accepted (position i, 0-based):
             accepted_per_pos[i] / drafts. vLLM and llama.cpp both count a position only when
             it and every position before it were accepted, so p_i falls with i.
    AL(k)    tokens per drafted step at depth k: 1 + sum_{i<k} p_i, with p read at the smallest
             measured depth K >= k (a draft at depth k is the first k tokens of the one at K).
    u        the share of output tokens made by steps without a draft: (steps - drafts) / output
             tokens, steps = output tokens - accepted tokens (every step yields one token of its
             own plus the drafts it accepted). n-gram lookup drafts only where the context
             repeats; those stretches of text, not the share of steps, stay put as k changes (a
             deeper draft covers the same stretch in fewer steps). A draft model or MTP head
             drafts every step: u = 0.
    T(k)     tokens per step at depth k: 1 / (u + (1 - u) / AL(k)): the draftless tokens take a
             step each, the rest take one step per AL(k). T(K) equals the measured out / steps.
             Beyond the deepest measured depth nothing is known of p_i: T stays at its last
             value ("extrapolated").
    cost     two kinds of step: one without a draft takes a = 1 / tok/s at n_spec 0 (the
             baseline, measured); a drafted one takes c + b L(k), L(k) = min(k, the source cell's
             mean draft length): verifying a batch costs more than one token (c > a on a CPU)
             and grows with the tokens it verifies (b). For each measured speculative cell its
             seconds per output token, 1 / tok/s = u a + (1 - u) / AL(K) (c + b L(K)), gives
             one (L, seconds per drafted step) point; c and b are a least-squares line through
             them and (0, a), the baseline's step, which verifies no draft token (with a single
             cell, c = a: assumed, so the search rules out no depth on it). On a compute-bound CPU b is large; on a
             memory-bound GPU small for small k. Nothing is assumed: c and b are fitted.
    R(k)     predicted tok/s = 1 / (u a + (1 - u) / AL(k) (c + b L(k))); R(0) = 1 / a.

The reference curve is Leviathan et al. (2023), a constant acceptance rate alpha and a draft cost
c' per drafted token relative to a target step: tokens per step (1 - alpha^(k+1)) / (1 - alpha),
speedup that divided by (k c' + 1). Here alpha is solved so that the closed form gives the
deepest measured cell's mean acceptance length, c' = b / a of the fit, and the curve is the
measured n_spec 0 tok/s times that speedup. It assumes every step drafts a full k tokens.

The tok/s predicted and measured is the median e2e tok/s of the cell's successful requests at
that level (summary.csv's figure, pooled over prompt sets).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import pandas as pd
from pydantic import BaseModel

from orchestrator.analysis.stats import median_ci
from orchestrator.analysis.summary import per_request
from engines.base import ACCEPTED, DRAFTED, HISTOGRAM, STEPS
from orchestrator.types.records import CellRecord

MAX_POSITIONS = 4096  # a per-position counter past this is no draft position


@dataclass(frozen=True)
class Acceptance:
    """One speculative cell's counters over one measured window."""

    drafts: float
    accepted: float
    output_tokens: float
    per_pos: tuple[float, ...]  # accepted counts by position, 0-based, no gaps
    draft_tokens: float | None = None  # tokens proposed in all (None: not reported)

    @property
    def steps(self) -> float:
        return self.output_tokens - self.accepted

    @property
    def undrafted(self) -> float:
        """u: the share of output tokens made by steps without a draft."""
        return min(1.0, max(0.0, (self.steps - self.drafts) / self.output_tokens)) if self.output_tokens > 0 else 1.0

    def shares(self) -> list[float]:
        """p_i for each position."""
        return [v / self.drafts for v in self.per_pos] if self.drafts > 0 else []

    def acceptance_length(self) -> float | None:
        """Mean tokens per drafted step: 1 + accepted / drafts."""
        return 1 + self.accepted / self.drafts if self.drafts > 0 else None

    def length_at(self, k: int) -> float:
        """AL(k) = 1 + sum_{i<k} p_i: tokens per drafted step if drafts stopped at k tokens."""
        return 1 + sum(self.shares()[:k])

    def draft_length_at(self, k: int) -> float:
        """Draft tokens per drafted step at depth k: min(k, this cell's mean draft length). n-gram
        drafts end where the match ends, so a depth-64 cell may draft 20 tokens a step."""
        mean = self.draft_tokens / self.drafts if self.draft_tokens is not None and self.drafts > 0 else float(k)
        return min(float(k), mean)


@dataclass(frozen=True)
class DepthRate:
    """One cell at one concurrency level, as measured."""

    n_spec: int
    tok_s: float  # median e2e tok/s of its successful requests
    ci_low: float | None
    ci_high: float | None
    requests: int
    acceptance: Acceptance | None = None  # None for n_spec 0, or without counters


@dataclass
class Fit:
    """The model of one engine at one concurrency level."""

    engine: str
    concurrency: int
    measured: dict[int, DepthRate]
    a: float | None = None  # seconds per step without a draft: 1 / n_spec 0's tok/s
    c: float | None = None  # seconds per drafted step, before its draft tokens ...
    b: float | None = None  # ... and per draft token it verifies
    alpha: float | None = None  # Leviathan's constant acceptance rate
    problem: str | None = None  # why there is no prediction
    cells: int = 0  # speculative cells the step-cost line was fitted through (1: its slope is assumed)

    def source(self, k: int) -> int | None:
        """The measured depth whose counters describe depth k: the smallest K >= k, else the deepest."""
        known = sorted(n for n, m in self.measured.items() if n > 0 and m.acceptance is not None)
        return next((n for n in known if n >= k), known[-1]) if known else None

    def counters(self, k: int) -> Acceptance | None:
        """The counters of depth k's source (None: no cell has counters)."""
        source = self.source(k)
        return None if source is None else self.measured[source].acceptance

    def tokens_per_step(self, k: int) -> tuple[float | None, str]:
        """T(k) and where it came from: "from n_spec K" or "extrapolated from n_spec K"."""
        if k == 0:
            return 1.0, "no drafts"
        source, acc = self.source(k), self.counters(k)
        if source is None or acc is None:
            return None, "no counters"
        where = f"from n_spec {source}" if source >= k else f"extrapolated from n_spec {source}"
        return 1 / (acc.undrafted + (1 - acc.undrafted) / acc.length_at(k)), where

    def step_s(self, k: int) -> float | None:
        """Seconds of one drafted step at depth k (of a plain step at 0)."""
        if self.a is None:
            return None
        if k == 0:
            return self.a
        acc = self.counters(k)
        if self.c is None or self.b is None or acc is None:
            return None  # not for a fitted line: it has both costs, from a cell with counters
        return self.c + self.b * acc.draft_length_at(k)

    def predict(self, k: int) -> float | None:
        """R(k) = 1 / (u a + (1 - u) / AL(k) * (c + b L(k))): seconds per output token inverted."""
        if self.a is None:
            return None
        if k == 0:
            return 1 / self.a
        acc, step = self.counters(k), self.step_s(k)
        if acc is None or step is None:
            return None
        per_token = acc.undrafted * self.a + (1 - acc.undrafted) / acc.length_at(k) * step
        return 1 / per_token if per_token > 0 else None

    def reference(self, k: int) -> float | None:
        """Leviathan et al.'s closed form, draft cost c = b / a, times the baseline's tok/s."""
        if self.alpha is None or self.a is None or self.b is None or 0 not in self.measured or self.b < 0:
            return None  # a falling cost per draft token has no draft cost to put in the closed form
        return self.measured[0].tok_s * leviathan_speedup(self.alpha, k, self.b / self.a)

    def best(self, depths: Iterable[int]) -> int | None:
        """The depth of `depths` with the highest predicted tok/s (the smaller one on a tie)."""
        scored = [(r, k) for r, k in ((self.predict(k), k) for k in depths) if r is not None]
        return max(scored, key=lambda rk: (rk[0], -rk[1]))[1] if scored else None


def leviathan_tokens(alpha: float, k: int) -> float:
    """Expected tokens per step for a constant acceptance rate alpha: (1 - a^(k+1)) / (1 - a)."""
    return float(k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def leviathan_speedup(alpha: float, k: int, c: float) -> float:
    """Leviathan et al. (2023), Theorem 3.8: tokens per step over (k c + 1)."""
    return leviathan_tokens(alpha, k) / (k * c + 1)


def solve_alpha(length: float, k: int) -> float | None:
    """The constant acceptance rate whose expected tokens per step at depth k equal `length`."""
    if not (1 <= length <= k + 1) or k < 1:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection: leviathan_tokens rises with alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if leviathan_tokens(mid, k) < length else (lo, mid)
    return (lo + hi) / 2


def fit(engine: str, concurrency: int, measured: dict[int, DepthRate]) -> Fit:
    """Fit the cost of a drafted step to the measured cells; a fit without a baseline or a
    speculative cell with counters says why in `problem`."""
    out = Fit(engine, concurrency, dict(measured))
    if 0 not in measured or measured[0].tok_s <= 0:
        out.problem = "no n_spec 0 cell with a measured tok/s"
        return out
    out.a = 1 / measured[0].tok_s
    points = []  # (draft tokens per drafted step, seconds per drafted step) of each speculative cell
    for k, m in sorted(measured.items()):
        acc = m.acceptance
        if k and acc is not None and m.tok_s > 0 and acc.undrafted < 1:
            drafted = (1 / m.tok_s - acc.undrafted * out.a) * acc.length_at(k) / (1 - acc.undrafted)
            points.append((acc.draft_length_at(k), drafted))
    if not points:
        out.problem = "no speculative cell with draft counters (per position) to fit"
        out.a = None
        return out
    # The baseline is the point of a step that verifies no draft token (L = 0): it anchors the line
    # where the speculative cells are few or all deep (two deep cells alone extrapolate wildly).
    out.cells = len(points)
    xs = np.array([0.0] + [p[0] for p in points], float)
    ys = np.array([out.a] + [p[1] for p in points], float)
    out.b, out.c = (float(v) for v in np.polyfit(xs, ys, 1))
    if out.c <= 0:
        out.problem = f"the fitted cost of a drafted step before its tokens is {out.c:.3g} s: the cells do not fit a line"
        out.a = out.b = out.c = None
        return out
    counted = {k: m.acceptance for k, m in measured.items() if m.acceptance is not None}
    deepest = max(counted)
    length = counted[deepest].acceptance_length()
    out.alpha = None if length is None else solve_alpha(length, deepest)  # None: a window with no drafts
    return out


# ---------------------------------------------------------------- from records


def measured_cells(df: pd.DataFrame, cells: list[CellRecord]) -> dict[tuple[str, int], dict[int, DepthRate]]:
    """Per (engine, concurrency): each n_spec's DepthRate, from a measured frame
    (summary.measured_frame) and the run's CellRecords (the newest line of each cell)."""
    if df.empty:
        return {}
    windows = {(c.cell_id, c.block or 0): c.server_metrics or {} for c in cells}
    df = df if "block" in df else df.assign(block=0)  # records from before blocks
    ok = df[df["ok"]]
    out: dict[tuple[str, int], dict[int, DepthRate | None]] = {}  # None: two cells at that depth
    for (engine, conc, n_spec, cell_id), g in ok.groupby(["engine", "concurrency", "n_spec", "cell_id"]):
        rates = pd.to_numeric(g["e2e_tok_s"], errors="coerce").dropna()
        if rates.empty:
            continue
        low, high = median_ci(rates)
        tokens = float(pd.to_numeric(g["completion_tokens"], errors="coerce").fillna(0).sum())
        acc = None
        if n_spec:
            # a window is one start's: read the first block's against that block's tokens
            block = int(g["block"].min())
            tokens0 = float(pd.to_numeric(g.loc[g["block"] == block, "completion_tokens"], errors="coerce").fillna(0).sum())
            acc = from_requests(g, tokens) or acceptance_of(windows.get((cell_id, block), {}).get(str(int(conc))), tokens0)
        slot = out.setdefault((engine, int(conc)), {})
        if int(n_spec) in slot:  # two cells at one depth (merged runs): the model takes neither
            slot[int(n_spec)] = None
            continue
        slot[int(n_spec)] = DepthRate(int(n_spec), float(rates.median()), low, high, len(rates), acc)
    return {key: {k: m for k, m in v.items() if m is not None} for key, v in out.items()}


Window = BaseModel | dict[str, Any] | None  # a window's counters: WindowMetrics read back, or a dict


def _raw(window: Window) -> dict[str, Any] | None:
    return window.model_dump() if isinstance(window, BaseModel) else window


def acceptance_of(window: Window, output_tokens: float) -> Acceptance | None:
    """The counters of a window read back from cells.jsonl (hostile): per-position counts at
    positions 0, 1, ... without gaps, none above the drafts; the tokens generated (`generated`)."""
    raw = _raw(window)
    if raw is None:
        return None
    drafts, accepted, per_pos = raw.get("drafts"), raw.get("accepted_tokens"), raw.get("per_pos")
    if not (_count(drafts) and _count(accepted) and isinstance(per_pos, dict)) or drafts <= 0:
        return None
    counts: dict[int, float] = {}
    for pos, v in per_pos.items():
        if not (isinstance(pos, str) and pos.isascii() and pos.isdecimal() and len(pos) <= 6 and _count(v)):
            return None
        counts[int(pos)] = float(v)
    if not counts or set(counts) != set(range(len(counts))) or len(counts) > MAX_POSITIONS:
        return None
    series = tuple(counts[i] for i in range(len(counts)))
    if max(series) > drafts or output_tokens <= 0:
        return None
    tokens = raw.get("draft_tokens")
    tokens = float(tokens) if _count(tokens) and tokens >= accepted else None
    return Acceptance(float(drafts), float(accepted), generated(output_tokens, drafts, accepted), series, tokens)


def from_requests(g: pd.DataFrame, output_tokens: float) -> Acceptance | None:
    """Per-position counts from the requests' own histograms (vLLM's per-request metrics), when
    every request of the group has one: position i was accepted in the steps that accepted more
    than i drafts. The records were checked on reading back (records.py)."""
    if HISTOGRAM not in g or g[HISTOGRAM].isna().any() or not len(g):
        return None
    hists = [list(h) for h in g[HISTOGRAM]]
    if not all(len(h) <= MAX_POSITIONS + 1 and all(_count(v) for v in h) for h in hists):
        return None  # records.py bounds these; a frame built elsewhere is not trusted either
    width = max(len(h) for h in hists)
    total = np.zeros(width)
    for h in hists:
        total[:len(h)] += np.asarray(h, dtype=float)
    drafts, accepted = float(total.sum()), float(sum(j * v for j, v in enumerate(total)))
    if drafts <= 0 or output_tokens <= 0:
        return None
    per_pos = tuple(float(v) for v in np.cumsum(total[::-1])[::-1][1:])  # position i: steps accepting > i
    drafted = float(pd.to_numeric(g[DRAFTED], errors="coerce").sum()) if DRAFTED in g else None
    return Acceptance(drafts, accepted, generated(output_tokens, drafts, accepted), per_pos,
                      drafted if drafted and drafted >= accepted else None)


def generated(output_tokens: float, drafts: float, accepted: float) -> float:
    """Tokens the server generated: at least the kept output, and at least one token of each
    drafted step plus its accepted drafts. A request's last step may accept drafts past
    max_tokens, which the server then drops (seen with vLLM at depth 32 and 96 tokens: 604
    drafts accepted for 576 tokens kept); the model counts what was generated."""
    return float(max(output_tokens, drafts + accepted))


def _count(v: Any) -> TypeGuard[float]:
    """A counter's value read back: a number from 0 to 1e15 (an integer of 400 digits is none)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1e15


def fits(df: pd.DataFrame, cells: list[CellRecord]) -> list[Fit]:
    return [fit(engine, conc, m) for (engine, conc), m in sorted(measured_cells(df, cells).items())]


MODEL_COLUMNS = ["engine", "concurrency", "n_spec", "measured_tok_s", "measured_ci_low", "measured_ci_high",
                 "predicted_tok_s", "error", "tokens_per_step", "tokens_per_step_source", "step_ms",
                 "reference_tok_s"]


def model_table(found: list[Fit]) -> pd.DataFrame:
    """model.csv: every depth from 0 to the deepest measured one, per engine and level."""
    rows = []
    for f in found:
        if f.problem:
            continue
        for k in range(0, _deepest(f) + 1):
            m = f.measured.get(k)
            pred, (t, where) = f.predict(k), f.tokens_per_step(k)
            rows.append(dict(engine=f.engine, concurrency=f.concurrency, n_spec=k,
                             measured_tok_s=m.tok_s if m else None, measured_ci_low=m.ci_low if m else None,
                             measured_ci_high=m.ci_high if m else None, predicted_tok_s=pred,
                             error=pred / m.tok_s - 1 if m and pred and m.tok_s else None,
                             tokens_per_step=t, tokens_per_step_source=where,
                             step_ms=_ms(f.step_s(k)), reference_tok_s=f.reference(k)))
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def format_fits(found: list[Fit]) -> str:
    """A few lines: the fit per engine and level, the predicted best and how well it fits."""
    lines = [_fit_line(f) for f in found]
    return "speedup model (plain and drafted steps, fitted to the measured cells; docs/metrics.md):\n" + "\n".join(lines) if lines else ""


def _fit_line(f: Fit) -> str:
    """One fit's line: its step costs, its predicted best depth and how well it fits the cells."""
    head = f"{f.engine} at c={f.concurrency}"
    top = None if f.problem else f.best(range(0, _deepest(f) + 1))
    rate = None if top is None else f.predict(top)
    if f.a is None or f.b is None or f.c is None or top is None or rate is None:
        return f"{head}: no model ({f.problem})"  # a fit without a problem has all of them (n_spec 0 predicts)
    errs = [abs(pred / m.tok_s - 1) for k, m in f.measured.items() if (pred := f.predict(k)) and m.tok_s]
    gain = f", {rate / f.measured[0].tok_s:.2f}x n_spec 0's median" if f.measured[0].tok_s else ""
    return (f"{head}: a plain step {1000 * f.a:.2f} ms, a drafted one {1000 * f.c:.2f} ms + {1000 * f.b:.3f} ms "
            f"per draft token; predicted best "
            f"n_spec {top} at {rate:.1f} tok/s{gain} ({_measured_text(f, top)}); "
            f"in-sample fit within {100 * max(errs):.0f}% on {len(errs)} measured cells"
            + (" (two cells: a line through both, so 0% by construction)" if len(errs) == 2 else ""))


def _deepest(f: Fit) -> int:
    """The deepest measured depth, capped: a record read back may claim any n_spec."""
    return min(max(f.measured), MAX_POSITIONS)


def _measured_text(f: Fit, k: int) -> str:
    m = f.measured.get(k)
    return "predicted, not measured" if m is None else f"measured: {m.tok_s:.1f} tok/s"


CHECK_COLUMNS = ["engine", "cell_id", "block", "concurrency", "requests", "counted", "drafts_requests", "drafts_metrics",
                 "draft_tokens_requests", "draft_tokens_metrics", "accepted_requests", "accepted_metrics", "equal"]


def window_check(df: pd.DataFrame, cells: list[CellRecord]) -> pd.DataFrame:
    """Per speculative cell and level: the requests' own draft counts summed over the measured
    window against the /metrics deltas of that window (every measured request of the level,
    failed ones too, is in the window; a request without counts leaves the sums short)."""
    rows = []
    windows = {(c.cell_id, c.block or 0): c.server_metrics or {} for c in cells}  # one window per start
    if df.empty or DRAFTED not in df or df[DRAFTED].isna().all():
        return pd.DataFrame(columns=CHECK_COLUMNS)
    df = df if "block" in df else df.assign(block=0)  # records from before blocks
    for (engine, cell_id, block, conc), g in df[df["n_spec"] > 0].groupby(["engine", "cell_id", "block", "concurrency"]):
        w = _raw(windows.get((cell_id, int(block)), {}).get(str(int(conc))))
        drafted = per_request(g, DRAFTED)
        if w is None or drafted.isna().all():
            continue
        accepted, steps = _total(per_request(g, ACCEPTED)), _total(per_request(g, STEPS))
        counted = int(drafted.notna().sum())
        row: dict[str, Any] = dict(engine=engine, cell_id=cell_id, block=int(block), concurrency=int(conc), requests=len(g),
                   counted=counted,
                   drafts_requests=steps, drafts_metrics=w.get("drafts"), draft_tokens_requests=_total(drafted),
                   draft_tokens_metrics=w.get("draft_tokens"), accepted_requests=accepted,
                   accepted_metrics=w.get("accepted_tokens"))
        pairs = [(row["draft_tokens_requests"], row["draft_tokens_metrics"]),
                 (row["accepted_requests"], row["accepted_metrics"])]
        if steps is not None:
            pairs.append((steps, row["drafts_metrics"]))
        row["equal"] = all(a is not None and b is not None and _count(b) and a == b for a, b in pairs)
        rows.append(row)
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def _total(values: pd.Series) -> float | None:
    """The sum of the requests' counts; None when no request has one."""
    return None if values.isna().all() else float(values.fillna(0).sum())


def format_check(check: pd.DataFrame) -> str:
    if check.empty:
        return ""
    lines = []
    for r in check.itertuples(index=False):
        steps = "" if r.drafts_requests is None or pd.isna(r.drafts_requests) else \
            f"steps {int(r.drafts_requests)} vs {_num(r.drafts_metrics)}, "
        start = f" block {r.block + 1}" if check["block"].max() > 0 else ""
        lines.append(f"{r.cell_id}{start} c={r.concurrency}: {r.counted} of {r.requests} requests counted; {steps}"
                     f"draft tokens {_num(r.draft_tokens_requests)} vs {_num(r.draft_tokens_metrics)}, accepted "
                     f"{_num(r.accepted_requests)} vs {_num(r.accepted_metrics)}: "
                     + ("equal" if r.equal else "NOT equal"))
    return "per-request draft counts summed over each measured window vs the /metrics deltas:\n" + "\n".join(lines)


def _num(v: Any) -> str:
    """A count for the check's line; "-" for anything that is no finite number (records are hostile)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not _count(v):
        return "-"
    return f"{v:.0f}"
