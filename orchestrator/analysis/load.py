"""Where speculation stops paying under load: per engine, depth and prompt set, the lowest
concurrency level whose paired speedup interval includes 1.0 or lies below it.

Speculation spends spare compute; as concurrent streams fill the batch there is less to spare,
and public reports put the crossover at 8-20 streams for some methods. Only levels with a
verdict are judged; a level without one (fewer than MIN_PROMPTS prompts paired, or every request failed)
is named as such, never read as paying or not. A level that pays again above the crossover is
said too.
"""

from __future__ import annotations

import pandas as pd

from orchestrator.analysis.pairs import MIN_PROMPTS
from orchestrator.analysis.stats import ratio_text

PAYS = "faster"
GROUP = ["engine", "method", "n_spec", "prompt_set", "cell_id"]
COLUMNS = GROUP + ["levels", "stops_paying_at", "finding"]


def crossover(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per speculative cell and prompt set measured at two or more levels."""
    spec = summary[(summary["n_spec"] > 0) & summary["concurrency"].notna()]
    rows = []
    for key, g in spec.groupby(GROUP, sort=True):
        g = g.sort_values("concurrency", kind="stable").drop_duplicates("concurrency", keep="last")
        if len(g) < 2:
            continue
        at, finding = _finding(g)
        rows.append(dict(zip(GROUP, key, strict=True), levels=",".join(str(int(c)) for c in g["concurrency"]),
                         stops_paying_at=at, finding=finding))
    return pd.DataFrame(rows, columns=COLUMNS)


def _finding(g: pd.DataFrame) -> tuple[int | None, str]:
    judged = g[g["speedup_verdict"].notna()]
    unjudged = _levels(g[g["speedup_verdict"].isna()])
    note = f"; no verdict at c={unjudged} (fewer than {MIN_PROMPTS} prompts paired)" if unjudged else ""
    if judged.empty:
        return None, f"no verdict at any level (fewer than {MIN_PROMPTS} prompts paired per level)"
    paying = judged["speedup_verdict"] == PAYS
    if paying.all():
        return None, f"faster at every judged level, c={_levels(judged)}" + note
    first = judged[~paying].iloc[0]
    at = int(first["concurrency"])
    what = f"{ratio_text(first['speedup'], first['speedup_ci_low'], first['speedup_ci_high'])}, " \
           f"{first['speedup_verdict']}"
    before = judged[judged["concurrency"] < at]
    head = (f"faster at c={_levels(before)}, stops paying at c={at}: {what}" if len(before)
            else f"not faster at c={at}, the lowest judged level: {what}")
    again = judged[(judged["concurrency"] > at) & paying]
    above = f"; faster {'again ' if len(before) else ''}at c={_levels(again)}" if len(again) else ""
    return at, head + above + note


def _levels(g: pd.DataFrame) -> str:
    return ",".join(str(int(c)) for c in g["concurrency"])


def format_crossover(summary: pd.DataFrame) -> str:
    """A line per engine x depth x prompt set measured at several levels; '' when none was."""
    found = crossover(summary)
    if found.empty:
        return ""
    lines = [f"{r.engine} {r.method} n_spec {r.n_spec} ({r.prompt_set}, c={r.levels}): {r.finding}"
             for r in found.itertuples(index=False)]
    return "under load (typical paired speedup by concurrency):\n" + "\n".join(lines)
