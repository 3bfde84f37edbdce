"""Where speculation stops paying under load: per engine, depth and prompt set, the lowest
concurrency level whose paired speedup interval includes 1.0 or lies below it.

Speculation spends spare compute; as concurrent streams fill the batch there is less to spare,
and public reports put the crossover at 8-20 streams for some methods. A depth that never stops
paying within the measured levels says so ("pays up to c=N"), and one whose levels have no
verdict (too few pairs) says that, rather than guessing.
"""

from __future__ import annotations

import pandas as pd

from orchestrator.analysis.pairs import MIN_PAIRS

PAYS = "faster"
KEY = ["engine", "method", "n_spec", "prompt_set"]
COLUMNS = KEY + ["levels", "stops_paying_at", "finding"]


def crossover(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per speculative engine x depth x prompt set measured at two or more levels."""
    spec = summary[(summary["n_spec"] > 0) & summary["concurrency"].notna()]
    rows = []
    for key, g in spec.groupby(KEY, sort=True):
        g = g.sort_values("concurrency")
        if g["concurrency"].nunique() < 2:
            continue
        levels = [int(c) for c in g["concurrency"]]
        at, finding = _first_level_not_paying(g)
        rows.append(dict(zip(KEY, key), levels=",".join(map(str, levels)), stops_paying_at=at, finding=finding))
    return pd.DataFrame(rows, columns=COLUMNS)


def _first_level_not_paying(g: pd.DataFrame) -> tuple[int | None, str]:
    judged = g[g["speedup_verdict"].notna()]
    if judged.empty:
        return None, f"no verdict at any level (fewer than {MIN_PAIRS} pairs per level)"
    for r in judged.itertuples(index=False):
        if r.speedup_verdict != PAYS:
            return int(r.concurrency), (f"stops paying at c={int(r.concurrency)}: {r.speedup:.2f}x "
                                        f"[{r.speedup_ci_low:.2f}-{r.speedup_ci_high:.2f}], {r.speedup_verdict}")
    top = int(judged["concurrency"].max())
    return None, f"pays at every measured level up to c={top}"


def format_crossover(summary: pd.DataFrame) -> str:
    """A line per engine x depth x prompt set measured at several levels; '' when none was."""
    found = crossover(summary)
    if found.empty:
        return ""
    lines = [f"{r.engine} {r.method} n_spec {r.n_spec} ({r.prompt_set}, c={r.levels}): {r.finding}"
             for r in found.itertuples(index=False)]
    return "under load (typical paired speedup by concurrency):\n" + "\n".join(lines)
