"""What to run: per engine, concurrency and prompt set, the depth to deploy, from measured cells.

The rule: the candidates are the depths whose typical paired speedup is `faster` and whose cell
ran clean (status ok, no failed request: a depth whose server failed is no depth to deploy). Take
the fastest; then the smallest candidate that is not slower than it, pair by pair (each prompt and
repeat ran at both depths, so speculative_a / speculative_b per request, resampled over the
requests both have): a smaller depth drafts less, holds less memory for drafts and, under load,
stops paying later, so when the data do not put the larger depth ahead, the smaller one is the
better bet. Depths with too few requests in common to compare are not called equal. When no
depth qualifies, the answer is to run without speculation, and the line says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from orchestrator.analysis.pairs import MIN_PAIRS, PAIRED, interval_of_pairs
from orchestrator.analysis.stats import median, ratio_text, verdict

KEY = ["prompt_id", "repeat"]  # within one engine, concurrency and prompt set


@dataclass
class Advice:
    engine: str
    concurrency: int
    prompt_set: str
    n_spec: int  # 0: run without speculation
    method: str
    speedup: float | None  # None for no speculation: the baseline is no measured speedup
    speedup_ci_low: float | None
    speedup_ci_high: float | None
    basis: str  # "measured" (a predicted depth would say "predicted")
    server_starts: int
    why: str


def what_to_run(summary: pd.DataFrame, pairs: pd.DataFrame, starts: dict[str, int]) -> pd.DataFrame:
    """One row per engine x concurrency x prompt set that has a baseline and a speculative cell;
    `starts`: server starts per engine (RunDir.server_starts)."""
    rows = []
    data = summary[summary["concurrency"].notna()]
    for (engine, conc, prompts), g in data.groupby(["engine", "concurrency", "prompt_set"], sort=True):
        spec = g[g["n_spec"] > 0]
        if spec.empty or not (g["n_spec"] == 0).any():
            continue
        mine = pairs[(pairs["engine"] == engine) & (pairs["concurrency"] == conc) & (pairs["prompt_set"] == prompts)
                     & (pairs["status"] == PAIRED)] if len(pairs) else pairs
        rows.append(Advice(engine=engine, concurrency=int(conc), prompt_set=prompts, basis="measured",
                           server_starts=int(starts.get(engine, 0)), **_advise(spec, mine)))
    return pd.DataFrame([asdict(r) for r in rows], columns=list(Advice.__dataclass_fields__))


NONE = dict(n_spec=0, method="none", speedup=None, speedup_ci_low=None, speedup_ci_high=None)


def _advise(spec: pd.DataFrame, pairs: pd.DataFrame) -> dict:
    clean = (spec["cell_status"] == "ok") & (pd.to_numeric(spec["requests_failed"], errors="coerce").fillna(0) == 0)
    faster = spec[(spec["speedup_verdict"] == "faster") & clean]
    left_out = _left_out(spec[(spec["speedup_verdict"] == "faster") & ~clean])
    if faster.empty:
        measured = spec[spec["speedup"].notna()]
        if measured.empty:
            return dict(NONE, why="no speculative request paired with its n_spec 0 twin" + left_out)
        top = measured.loc[measured["speedup"].astype(float).idxmax()]
        return dict(NONE, why=f"no depth was shown to be faster; the best, n_spec {int(top['n_spec'])}, was "
                              f"{_x(top)} ({_verdict_text(top['speedup_verdict'])})" + left_out)
    ranked = faster.assign(_s=faster["speedup"].astype(float)).sort_values(["_s", "n_spec"], ascending=[False, True])
    best = ranked.iloc[0]
    smaller = faster[faster["n_spec"] < best["n_spec"]].sort_values("n_spec")
    verdicts = {int(r["n_spec"]): _against(pairs, r["cell_id"], best["cell_id"]) for _, r in smaller.iterrows()}
    ties = [r for _, r in smaller.iterrows() if verdicts[int(r["n_spec"])] in ("no clear difference", "faster")]
    pick = ties[0] if ties else best
    if ties:
        why = (f"the fastest, n_spec {int(best['n_spec'])} at {_x(best)}, is not faster than this smaller depth "
               "pair by pair")
    elif not len(smaller):
        why = "the only depth that was faster" if len(faster) == 1 else "the fastest depth and the smallest faster one"
    else:
        apart = [n for n, v in verdicts.items() if v == "slower"]
        unknown = [n for n, v in verdicts.items() if v is None]
        why = "the fastest depth" + (f"; faster pair by pair than n_spec {_list(apart)}" if apart else "") + (
            f"; too few requests in common with n_spec {_list(unknown)} to compare" if unknown else "")
    return dict(n_spec=int(pick["n_spec"]), method=pick["method"], speedup=float(pick["speedup"]),
                speedup_ci_low=pick["speedup_ci_low"], speedup_ci_high=pick["speedup_ci_high"], why=why + left_out)


def _against(pairs: pd.DataFrame, cell_a: str, cell_b: str) -> str | None:
    """The verdict of depth a's requests over depth b's, pair by pair; None with fewer than
    MIN_PAIRS requests in common."""
    def rates(cell):
        s = pairs[pairs["cell_id"] == cell].set_index(KEY)["speculative_tok_s"]
        return s[~s.index.duplicated(keep="last")]  # merged records may repeat a request

    both = pd.concat([rates(cell_a), rates(cell_b)], axis=1, join="inner").astype(float)
    low, high = interval_of_pairs(median, (both.iloc[:, 0] / both.iloc[:, 1]).to_numpy())
    return verdict(low, high)


def _left_out(rows: pd.DataFrame) -> str:
    if rows.empty:
        return ""
    what = [f"n_spec {int(r['n_spec'])} ({r['cell_status']}, {int(r['requests_failed'] or 0)} failed)"
            for _, r in rows.iterrows()]
    return "; left out, though faster: " + ", ".join(what)


def _list(depths: list[int]) -> str:
    return ", ".join(map(str, depths))


def _verdict_text(v) -> str:
    return v if isinstance(v, str) else f"no verdict: fewer than {MIN_PAIRS} pairs"


def _x(r) -> str:
    return ratio_text(float(r["speedup"]), r["speedup_ci_low"], r["speedup_ci_high"])


def format_advice(advice: pd.DataFrame, title: str = "what to run (typical paired speedup):",
                  where=lambda r: r.prompt_set) -> str:
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
