"""Results per category: a run's summary, request pairs and what-to-run, cut by the prompts'
categories (SPEED-Bench's, MT-Bench's, the built-in sets') instead of by prompt set.

Acceptance, and so the speedup, depends on what is being written: a depth that wins on code can
lose on prose. The category view relabels each measured request: its prompt set becomes its
category (`<set> (set)` where the set has none) and its prompt id becomes `set/id`. Twins still
pair exactly (same prompt, repeat and concurrency at n_spec 0), and every column, interval and
verdict comes from summary.py, pairs.py and recommend.py unchanged: one definition of each
figure, whichever way the run is cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from orchestrator.analysis.pairs import MIN_PROMPTS, pair_table
from orchestrator.analysis.recommend import format_advice, what_to_run
from orchestrator.analysis.summary import measured_frame, summarize
from orchestrator.types.records import CellRecord, RequestRecord

@dataclass
class CategoryView:
    summary: pd.DataFrame  # summary.py's rows, `prompt_set` holding the category
    pairs: pd.DataFrame
    advice: pd.DataFrame  # recommend.what_to_run per engine, concurrency and category
    sets: dict[str, list[str]]  # category -> the prompt sets its requests came from

    def table(self) -> pd.DataFrame:
        """summary_by_category.csv."""
        out = self.summary.rename(columns={"prompt_set": "category"})
        out.insert(out.columns.get_loc("category") + 1, "prompt_sets",
                   [", ".join(self.sets.get(c, [])) if isinstance(c, str) else None for c in out["category"]])
        return out[out["category"].notna()]

    def advice_text(self) -> str:
        """A line per category with enough pairs for a verdict; the rest named in one line."""
        spec = self.summary[self.summary["n_spec"] > 0]
        judged = spec.groupby(["engine", "concurrency", "prompt_set"])["speedup_verdict"].apply(lambda v: v.notna().any())
        enough = [bool(judged.get((r.engine, r.concurrency, r.prompt_set), False))
                  for r in self.advice.itertuples(index=False)]
        shown, few = self.advice[enough], self.advice[[not e for e in enough]]
        text = format_advice(shown, "what to run per category (typical paired speedup):",
                             lambda r: f"{r.prompt_set} ({', '.join(self.sets.get(r.prompt_set, []))})")
        if few.empty:
            return text
        names = ", ".join(sorted(set(few["prompt_set"])))
        note = (f"no verdict per category (fewer than {MIN_PROMPTS} prompts paired, or no spread to judge, "
                f"at every depth): {names}; take more prompts per category (repeats of one prompt do not help)")
        return f"{text}\n{note}" if text else f"what to run per category:\n{note}"


def has_categories(requests: list[RequestRecord]) -> bool:
    return any(r.category for r in requests if r.phase == "measured")


def relabel(requests: list[RequestRecord]) -> list[RequestRecord]:
    """The records with category for prompt set and set/id for prompt id. A prompt's category
    is taken from any of its records that has one (a run resumed across a version of orch whose
    sets had none); a set without categories is a category of its own, named "<set> (set)"."""
    known = {(r.prompt_set, r.prompt_id): r.category for r in requests if r.category}
    return [r.model_copy(update={"prompt_set": category_of(r, known),
                                 "prompt_id": f"{r.prompt_set}/{r.prompt_id}"}) for r in requests]


def category_of(r: RequestRecord, known: dict[tuple[str, str], str]) -> str:
    return r.category or known.get((r.prompt_set, r.prompt_id)) or f"{r.prompt_set} (set)"


def category_view(requests: list[RequestRecord], cells: list[CellRecord],
                  starts: dict[str, int]) -> CategoryView | None:
    """None for a run whose prompts carry no category."""
    if not has_categories(requests):
        return None
    records = relabel(requests)
    sets: dict[str, set[str]] = {}
    for before, after in zip(requests, records, strict=True):
        sets.setdefault(after.prompt_set, set()).add(before.prompt_set)
    summary = summarize(records, cells)
    pairs = pair_table(measured_frame(records), cells)
    advice = what_to_run(summary, pairs, starts)
    return CategoryView(summary, pairs, advice, {c: sorted(s) for c, s in sets.items()})
