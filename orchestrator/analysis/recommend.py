"""What to run: per engine, concurrency and prompt set, the depth to deploy, from measured cells.

The rule (docs/metrics.md, "What to run"):

1. Each speculative depth against n_spec 0, from its request pairs, with the two-level interval
   (spread.py) at confidence 1 - 0.05/m for m depths (Bonferroni): the chance that any depth
   of a family with no true speedup is called faster stays at 5% or less, however many depths
   the grid holds. Candidates: the depths so called faster whose cells ran clean (every start
   ok, no failed request: a depth whose server failed is no depth to deploy).
2. The best: the candidate with the highest typical speedup. Every other clean measured depth is
   compared with it pair by pair within a block (same prompt and repeat), with the same
   two-level interval at 1 - 0.05/(d-1) for d depths; an interval that holds 1 means "not told
   apart". A depth faster than the best pair by pair becomes the best.
3. The pick: the smallest depth of that set that is itself shown faster than n_spec 0. A smaller
   depth drafts less, holds less memory for drafts and, under load, stops paying later, so when
   the data do not put a larger depth ahead, the smaller one is the better bet. When no depth
   qualifies, run without speculation, and the line says why (and what to raise where nothing
   could be decided).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from orchestrator.analysis import spread
from orchestrator.analysis.pairs import MIN_PROMPTS, PAIRED, PairedSpeedup, matched_ratios, paired_speedups
from orchestrator.analysis.stats import ratio_text

FAMILY = 0.05  # the family-wise error of "faster" over one engine, level and prompt set's depths
KEY = ["block", "prompt_id", "repeat"]  # within one engine, concurrency and prompt set


@dataclass
class Advice:
    engine: str
    concurrency: int
    prompt_set: str
    n_spec: int  # 0: run without speculation
    method: str
    speedup: float | None  # None for no speculation: the baseline is no measured speedup
    speedup_ci_low: float | None  # at the family-wise confidence the decision used
    speedup_ci_high: float | None
    basis: str  # "measured" (a predicted depth would say "predicted")
    server_starts: int
    why: str
    best: int | None = None  # the fastest depth shown faster than n_spec 0
    indistinct: str = ""  # the depths not told apart from the best, "32, 48, 64" (the best among them)
    confidence: float | None = None  # of each comparison, after the family-wise correction


def what_to_run(summary: pd.DataFrame, pairs: pd.DataFrame, starts: dict[str, int]) -> pd.DataFrame:
    """One row per engine x concurrency x prompt set that has a baseline and a speculative cell;
    `starts`: server starts per engine (RunDir.server_starts)."""
    rows = []
    data = summary[summary["concurrency"].notna()]
    for (engine, conc, prompts), g in data.groupby(["engine", "concurrency", "prompt_set"], sort=True):
        spec = g[g["n_spec"] > 0]
        if spec.empty or not (g["n_spec"] == 0).any():
            continue
        level = pairs[(pairs["engine"] == engine) & (pairs["concurrency"] == conc)] if len(pairs) else pairs
        rows.append(Advice(engine=engine, concurrency=int(conc), prompt_set=prompts, basis="measured",
                           server_starts=int(starts.get(engine, 0)), **decide(spec, level, prompts)))
    return pd.DataFrame([asdict(r) for r in rows], columns=list(Advice.__dataclass_fields__))


NONE: dict[str, Any] = dict(n_spec=0, method="none", speedup=None, speedup_ci_low=None, speedup_ci_high=None)


def decide(spec: pd.DataFrame, level: pd.DataFrame, prompts: str) -> dict[str, Any]:
    """The decision for one prompt set from its summary rows (`spec`: speculative depths) and the
    pair rows of its engine and level (every prompt set: they share the start variance)."""
    m = max(1, int(spec["requests_paired"].fillna(0).astype(int).gt(0).sum()))
    confidence = 1 - FAMILY / m
    judged = _judged(spec, level, prompts, confidence)
    rows = {int(r["n_spec"]): r for _, r in spec.iterrows()}
    clean = {k: r["cell_status"] == "ok" and not (pd.to_numeric(r["requests_failed"], errors="coerce") or 0)
             for k, r in rows.items()}
    method = {k: r["method"] for k, r in rows.items()}
    cell = {k: r["cell_id"] for k, r in rows.items()}
    faster = {k: p for k, p in judged.items() if p is not None and p.speedup_verdict == "faster"}
    left_out = _left_out(spec[spec["n_spec"].isin([k for k in faster if not clean[k]])])
    faster = {k: p for k, p in faster.items() if clean[k]}
    base = dict(confidence=confidence)
    shown = {k: p for k, p in judged.items() if p is not None and p.speedup is not None and clean[k]}
    measured = sorted(shown)
    if not faster:
        tied = [k for k in measured if shown[k].speedup_verdict == "no clear difference"]
        return dict(NONE, **base, indistinct=", ".join(map(str, [0] + tied)),
                    why=_none_why(judged, confidence) + left_out)
    best = max(faster, key=lambda k: (faster[k].speedup, -k))
    verdicts = _against_best(level, prompts, cell, best, measured)
    ahead = [k for k, v in verdicts.items() if v == "faster" and k in faster]
    if ahead:  # faster than the highest median request by request: that depth is the best
        best = max(ahead, key=lambda k: (faster[k].speedup, -k))
        verdicts = _against_best(level, prompts, cell, best, measured)
    apart = sorted([best] + [k for k, v in verdicts.items() if v == "no clear difference"])
    # the smallest of them that is itself shown faster than n_spec 0: a tie with the best is not
    # enough to deploy a depth that may not pay at all
    pick = min(k for k in apart if k in faster)
    p = faster[pick]
    why = _pick_why(best, pick, apart, faster, verdicts)
    return dict(n_spec=pick, method=method[pick], speedup=p.speedup, speedup_ci_low=p.speedup_ci_low,
                speedup_ci_high=p.speedup_ci_high, best=best, indistinct=", ".join(map(str, apart)),
                why=why + _level_note(confidence, len(judged)) + left_out, **base)


def _pick_why(best: int, pick: int, apart: list[int], faster: dict[int, PairedSpeedup],
              verdicts: dict[int, str | None]) -> str:
    """Why `pick`: the best, the depths not told apart from it, those told apart or not compared."""
    if len(apart) == 1 and len(faster) == 1:
        why = "the only depth shown faster"
    elif pick == best:
        why = "the fastest depth shown faster" + (
            f"; {_depths([k for k in apart if k != best])} not told apart from it, none of them shown faster "
            "than n_spec 0 and smaller" if len(apart) > 1 else "")
    else:
        b = faster[best]
        why = (f"the fastest, n_spec {best} at {ratio_text(b.speedup, b.speedup_ci_low, b.speedup_ci_high)}, "
               f"cannot be told apart from {_depths([k for k in apart if k != best])} pair by pair; n_spec {pick} "
               "is the smallest of those shown faster than n_spec 0, and drafts least")
    told = [k for k, v in verdicts.items() if v in ("slower", "faster")]
    unknown = [k for k, v in verdicts.items() if v is None]
    return why + (f"; told apart from {_depths(told)} pair by pair" if told else "") + (
        f"; too few requests in common with {_depths(unknown)} to compare" if unknown else "")


def _judged(spec: pd.DataFrame, level: pd.DataFrame, prompts: str, confidence: float) -> dict[int, PairedSpeedup | None]:
    """{depth: its PairedSpeedup at `confidence`, or None without pairs}."""
    found = paired_speedups(level, confidence) if len(level) else {}
    return {int(r["n_spec"]): found.get((r["cell_id"], int(r["concurrency"]), prompts)) for _, r in spec.iterrows()}


def _none_why(judged: dict[int, PairedSpeedup | None], confidence: float) -> str:
    # each measured depth's PairedSpeedup beside its speedup, known to be a number
    measured = {k: (p, p.speedup) for k, p in judged.items() if p is not None and p.speedup is not None}
    if not measured:
        return "no speculative request paired with its n_spec 0 twin"
    top = max(measured, key=lambda k: measured[k][1])
    p = measured[top][0]
    if p.speedup_verdict is None:
        return (f"not decided: the best, n_spec {top} at {ratio_text(p.speedup)}, has no interval (fewer than "
                f"{MIN_PROMPTS} prompts paired); add prompts to the set")
    return (f"no depth was shown to be faster; the best, n_spec {top}, was "
            f"{ratio_text(p.speedup, p.speedup_ci_low, p.speedup_ci_high)} ({p.speedup_verdict})"
            f"{_level_note(confidence, len(judged))}; more blocks or prompts narrow it")


def _level_note(confidence: float, m: int) -> str:
    return f" (each comparison at {confidence:.1%}: {m} depths judged together)" if m > 1 else ""


def _depths(ks: list[int]) -> str:
    return "n_spec " + ", ".join(map(str, ks))


def _against_best(level: pd.DataFrame, prompts: str, cell: dict[int, str], best: int,
                  candidates: list[int]) -> dict[int, str | None]:
    """{candidate: verdict of its requests over the best's, pair by pair}, at the family-wise
    confidence over the candidates; None with no prompt in common to compare on."""
    others = [k for k in candidates if k != best]
    if not others:
        return {}
    groups = {k: depth_ratios(level, prompts, cell[k], cell[best]) for k in others}
    found = spread.intervals({k: g for k, g in groups.items() if len(g)}, spread.nanmedian, ["ratio"],
                             lambda k: 0, 1 - FAMILY / len(others))
    return {k: spread.verdict(found[k]) if k in found else None for k in others}


def depth_ratios(level: pd.DataFrame, prompts: str, cell_a: str, cell_b: str) -> pd.DataFrame:
    """Depth a's e2e tok/s over depth b's for each request both sent in the same block (same
    prompt and repeat): columns block, prompt, ratio."""
    ok = level[(level["prompt_set"] == prompts) & (level["status"] == PAIRED)] if len(level) else level
    if not len(ok):
        return pd.DataFrame(columns=["block", "prompt", "ratio"])

    def rates(cell: str) -> pd.Series:
        return ok[ok["cell_id"] == cell].set_index(KEY)["speculative_tok_s"]

    out = matched_ratios(rates(cell_a), rates(cell_b)).rename("ratio").reset_index()
    return out.assign(prompt=out["prompt_id"], block=pd.to_numeric(out["block"]).fillna(0).astype(int))


def _left_out(rows: pd.DataFrame) -> str:
    if rows.empty:
        return ""
    what = [f"n_spec {int(r['n_spec'])} ({r['cell_status']}, {int(r['requests_failed'] or 0)} failed)"
            for _, r in rows.iterrows()]
    return "; left out, though faster: " + ", ".join(what)


def format_advice(advice: pd.DataFrame, title: str = "what to run (typical paired speedup):",
                  where: Callable[[Any], str] = lambda r: r.prompt_set) -> str:
    """One line per row of `advice`; `where(row)` names what the row is about (its prompt set,
    or its category and the sets it came from)."""
    if advice.empty:
        return ""
    lines = []
    for r in advice.itertuples(index=False):
        depth = "no speculation" if r.n_spec == 0 else \
            f"{r.method} n_spec {r.n_spec}, {ratio_text(r.speedup, r.speedup_ci_low, r.speedup_ci_high)}"
        lines.append(f"{r.engine} at c={r.concurrency} on {where(r)}: {depth} "
                     f"({r.basis}, {r.server_starts} server starts): {r.why}")
    return title + "\n" + "\n".join(lines)
