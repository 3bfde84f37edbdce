"""`orch retest RUN_A RUN_B`: do two runs of the same scenario give the same answer?

Per speculative cell (engine, depth, concurrency, prompt set): each run's typical paired speedup
and interval, and whether each interval holds the other run's estimate; each run's drift check;
and per engine, level and prompt set whether the two "what to run" answers agree: they agree
when their sets of depths not told apart from the best intersect (analysis/recommend.py), so
"n_spec 48; 32-64 not told apart" and "n_spec 32; 24-48 not told apart" agree, and "no
speculation" agrees with a depth only where that depth could not be told from n_spec 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.analysis.drift import checked
from orchestrator.analysis.pairs import pair_table
from orchestrator.analysis.recommend import what_to_run
from orchestrator.analysis.stats import ratio_text
from orchestrator.analysis.summary import measured_frame, summarize
from orchestrator.common.errors import OrchError
from orchestrator.results.rundir import RunDir

CELL = ["engine", "n_spec", "concurrency", "prompt_set"]
ANSWER = ["engine", "concurrency", "prompt_set"]


@dataclass
class Side:
    path: Path
    summary: pd.DataFrame
    advice: pd.DataFrame
    drift: str


@dataclass
class Retest:
    a: Side
    b: Side
    cells: pd.DataFrame  # one row per speculative cell in both runs
    answers: pd.DataFrame  # one row per engine, level and prompt set advised in either run
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return format_retest(self)

    @property
    def agree(self) -> bool:
        return bool(len(self.answers)) and bool(self.answers["agree"].all())


def read_side(path: Path) -> tuple[Side, list[str]]:
    run = RunDir(path)
    requests, cells = run.request_records(), run.cell_records()
    summary = summarize(requests, cells)
    frame = measured_frame(requests)
    pairs = pair_table(frame, cells)
    advice = what_to_run(summary, pairs, run.server_starts())
    return Side(run.path, summary, advice, checked(frame, cells, summary)[1]), list(run.warnings)


def retest(path_a: Path, path_b: Path) -> Retest:
    """`orch retest A B`: each run's answers, and where they agree."""
    for d in (path_a, path_b):
        if not (d / "requests.jsonl").is_file():
            raise OrchError(f"{d} holds no requests.jsonl; pass two run folders made by orch sweep")
    a, wa = read_side(path_a)
    b, wb = read_side(path_b)
    return Retest(a, b, _cells(a.summary, b.summary), _answers(a.advice, b.advice), wa + wb)


def _cells(sa: pd.DataFrame, sb: pd.DataFrame) -> pd.DataFrame:
    cols = CELL + ["speedup", "speedup_ci_low", "speedup_ci_high"]
    def spec(s: pd.DataFrame) -> pd.DataFrame:
        return s[(s["n_spec"] > 0) & s["concurrency"].notna()][cols]

    both = spec(sa).merge(spec(sb), on=CELL, suffixes=("_a", "_b"))
    both["a_holds_b"] = [_holds(lo, hi, v) for lo, hi, v in
                         zip(both["speedup_ci_low_a"], both["speedup_ci_high_a"], both["speedup_b"], strict=True)]
    both["b_holds_a"] = [_holds(lo, hi, v) for lo, hi, v in
                         zip(both["speedup_ci_low_b"], both["speedup_ci_high_b"], both["speedup_a"], strict=True)]
    return both.sort_values(CELL, ignore_index=True)


def _holds(low: Any, high: Any, value: Any) -> bool | None:
    if any(v is None or pd.isna(v) for v in (low, high, value)):
        return None
    return bool(low <= value <= high)


def _answers(aa: pd.DataFrame, ab: pd.DataFrame) -> pd.DataFrame:
    cols = ANSWER + ["n_spec", "indistinct"]
    both = aa[cols].merge(ab[cols], on=ANSWER, how="outer", suffixes=("_a", "_b"))
    both["agree"] = [bool(_set(x) & _set(y)) for x, y in zip(both["indistinct_a"], both["indistinct_b"], strict=True)]
    return both.sort_values(ANSWER, ignore_index=True)


def _set(text: Any) -> set[int]:
    return {int(k) for k in str(text).split(",") if k.strip().isdigit()} if isinstance(text, str) else set()


def format_retest(r: Retest) -> str:
    lines = [f"A: {r.a.path}", f"B: {r.b.path}", "", "A " + r.a.drift, "B " + r.b.drift, ""]
    view = pd.DataFrame({
        "engine": r.cells["engine"], "n_spec": r.cells["n_spec"], "conc": r.cells["concurrency"].astype(int),
        "prompts": r.cells["prompt_set"],
        "A [95% CI]": [ratio_text(v, lo, hi) for v, lo, hi in
                       zip(r.cells["speedup_a"], r.cells["speedup_ci_low_a"], r.cells["speedup_ci_high_a"], strict=True)],
        "B [95% CI]": [ratio_text(v, lo, hi) for v, lo, hi in
                       zip(r.cells["speedup_b"], r.cells["speedup_ci_low_b"], r.cells["speedup_ci_high_b"], strict=True)],
        "A holds B": r.cells["a_holds_b"].map(_yes), "B holds A": r.cells["b_holds_a"].map(_yes)})
    lines += ["typical paired speedup per cell, each run's interval against the other's estimate:",
              view.to_string(index=False) if len(view) else "(no speculative cell in both runs)", ""]
    n = len(r.cells)
    no_ci = int(r.cells["a_holds_b"].isna().sum() + r.cells["b_holds_a"].isna().sum())
    lines.append(f"A's interval holds B's estimate in {int(r.cells['a_holds_b'].fillna(False).sum())} of {n} cells; "
                 f"B's holds A's in {int(r.cells['b_holds_a'].fillna(False).sum())} of {n}; "
                 f"intervals missing: {no_ci}")
    lines += ["", "what to run (depths not told apart from the best, in brackets):"]
    for row in r.answers.itertuples(index=False):
        verdict = "DISAGREE" if not row.agree else (
            "agree" if _depth(row.n_spec_a) == _depth(row.n_spec_b) else "agree (the sets meet; the picks differ)")
        lines.append(f"{row.engine} at c={int(row.concurrency)} on {row.prompt_set}: A n_spec {_depth(row.n_spec_a)} "
                     f"[{row.indistinct_a}], B n_spec {_depth(row.n_spec_b)} [{row.indistinct_b}]: {verdict}")
    differ = int(sum(_depth(a) != _depth(b) for a, b in zip(r.answers["n_spec_a"], r.answers["n_spec_b"], strict=True))) if r.agree else 0
    lines.append(("the two answers agree" + (f"; in {differ} of {len(r.answers)} the two runs pick different depths "
                                              "from the depths neither could tell apart" if differ else ""))
                 if r.agree else "the two answers DISAGREE: exit code 1")
    return "\n".join(lines)


def _yes(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else ("yes" if v else "NO")


def _depth(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else str(int(v))
