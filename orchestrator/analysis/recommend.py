"""What to run: per engine, concurrency and prompt set, the depth to deploy, from measured cells.

The rule: among the depths whose typical paired speedup is `faster`, take the fastest; then the
smallest depth that cannot be told apart from it. Two depths are compared pair by pair (each
prompt and repeat ran at both, so speculative_a / speculative_b per request, resampled over the
requests both have): a smaller depth drafts less, holds less memory for drafts and, under load,
stops paying later, so when the data cannot separate two depths the smaller one is the better
bet. When no depth is faster, the answer is to run without speculation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from orchestrator.analysis.pairs import MIN_PAIRS, PAIRED, interval_of_pairs
from orchestrator.analysis.stats import median, verdict

KEY = ["prompt_id", "repeat"]  # within one engine, concurrency and prompt set


@dataclass
class Advice:
    engine: str
    concurrency: int
    prompt_set: str
    n_spec: int  # 0: run without speculation
    method: str
    speedup: float | None
    speedup_ci_low: float | None
    speedup_ci_high: float | None
    basis: str  # "measured" (a predicted depth would say "predicted")
    server_starts: int
    why: str


def what_to_run(summary: pd.DataFrame, pairs: pd.DataFrame, cells) -> pd.DataFrame:
    """One row per engine x concurrency x prompt set that has a baseline and a speculative cell."""
    starts = pd.Series([c.engine for c in cells]).value_counts().to_dict() if cells else {}
    rows = []
    data = summary[summary["concurrency"].notna()]
    for (engine, conc, prompts), g in data.groupby(["engine", "concurrency", "prompt_set"], sort=True):
        spec = g[(g["n_spec"] > 0) & g["speedup"].notna()]
        if spec.empty or not (g["n_spec"] == 0).any():
            continue
        mine = pairs[(pairs["engine"] == engine) & (pairs["concurrency"] == conc) & (pairs["prompt_set"] == prompts)
                     & (pairs["status"] == PAIRED)] if len(pairs) else pairs
        advice = _advise(spec, mine)
        rows.append(Advice(engine=engine, concurrency=int(conc), prompt_set=prompts,
                           server_starts=int(starts.get(engine, 0)), **advice))
    return pd.DataFrame([asdict(r) for r in rows], columns=list(Advice.__dataclass_fields__))


def _advise(spec: pd.DataFrame, pairs: pd.DataFrame) -> dict:
    faster = spec[spec["speedup_verdict"] == "faster"]
    if faster.empty:
        top = spec.loc[spec["speedup"].astype(float).idxmax()]
        return dict(n_spec=0, method="none", speedup=1.0, speedup_ci_low=None, speedup_ci_high=None,
                    basis="measured", why=f"no depth was shown to be faster; the best, n_spec {int(top['n_spec'])}, "
                                          f"was {_x(top)} ({_verdict_text(top['speedup_verdict'])})")
    best = faster.loc[faster["speedup"].astype(float).idxmax()]
    ties = [r for _, r in faster.sort_values("n_spec").iterrows()
            if r["n_spec"] < best["n_spec"] and _indistinguishable(pairs, r["cell_id"], best["cell_id"])]
    pick = ties[0] if ties else best
    smaller = (faster["n_spec"] < best["n_spec"]).any()
    why = (f"the fastest, n_spec {int(best['n_spec'])} at {_x(best)}, cannot be told apart from this smaller depth"
           if ties else "the fastest depth, told apart from each smaller depth that was faster" if smaller
           else "the only depth that was faster" if len(faster) == 1 else "the fastest depth and the smallest faster one")
    return dict(n_spec=int(pick["n_spec"]), method=pick["method"], speedup=float(pick["speedup"]),
                speedup_ci_low=pick["speedup_ci_low"], speedup_ci_high=pick["speedup_ci_high"],
                basis="measured", why=why)


def _indistinguishable(pairs: pd.DataFrame, cell_a: str, cell_b: str) -> bool:
    """True when depth a's requests over depth b's, pair by pair, have an interval that includes 1.0
    (or too few common pairs to tell)."""
    a = pairs[pairs["cell_id"] == cell_a].set_index(KEY)["speculative_tok_s"]
    b = pairs[pairs["cell_id"] == cell_b].set_index(KEY)["speculative_tok_s"]
    both = pd.concat([a, b], axis=1, join="inner").astype(float)
    ratios = (both.iloc[:, 0] / both.iloc[:, 1]).to_numpy()
    low, high = interval_of_pairs(median, ratios)
    return verdict(low, high) in (None, "no clear difference")


def _verdict_text(v) -> str:
    return v if isinstance(v, str) else f"no verdict: fewer than {MIN_PAIRS} pairs"


def _x(r) -> str:
    ci = "" if pd.isna(r["speedup_ci_low"]) else f" [{r['speedup_ci_low']:.2f}-{r['speedup_ci_high']:.2f}]"
    return f"{float(r['speedup']):.2f}x{ci}"


def format_advice(advice: pd.DataFrame) -> str:
    if advice.empty:
        return ""
    lines = []
    for r in advice.itertuples(index=False):
        depth = "no speculation" if r.n_spec == 0 else f"{r.method} n_spec {r.n_spec}"
        ci = "" if r.speedup_ci_low is None or pd.isna(r.speedup_ci_low) else \
            f" [{r.speedup_ci_low:.2f}-{r.speedup_ci_high:.2f}]"
        lines.append(f"{r.engine} at c={r.concurrency} on {r.prompt_set}: {depth}, {r.speedup:.2f}x{ci} "
                     f"({r.basis}, {r.server_starts} server starts): {r.why}")
    return "what to run (typical paired speedup):\n" + "\n".join(lines)
