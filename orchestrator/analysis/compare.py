"""`orch compare`: baseline against the best setting per engine, across runs.

The best setting is the speculative cell with the highest median e2e tok/s (best_ci_*: that
median's interval, over the cell's requests). Within a run, requests pair (same prompt and repeat
at n_spec 0 and at the best depth), so each row's speedup and its interval are that run's paired
ones (analysis/pairs.py). Across runs nothing pairs: two runs' rows are independent measurements,
each with its own interval, and compare puts them side by side without a ratio of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.types.records import machine_label
from orchestrator.results.rundir import RunDir, shown_cells
from orchestrator.analysis.summary import summarize

COLUMNS = ["run", "machine", "node", "engine", "prompt_set", "concurrency", "baseline_tok_s", "best_n_spec",
           "best_method", "best_tok_s", "best_ci_low", "best_ci_high", "speedup", "speedup_ci_low",
           "speedup_ci_high", "verdict"]


@dataclass
class Comparison:
    table: pd.DataFrame
    warnings: list[str]  # from reading the runs' records back

    @property
    def text(self) -> str:
        return format_compare(self.table)

    def write(self, out: Path) -> Path:
        """compare.csv in `out`, made if missing."""
        out.mkdir(parents=True, exist_ok=True)
        shown_cells(self.table).to_csv(out / "compare.csv", index=False)
        return out / "compare.csv"


def comparison(run_dirs: list[Path]) -> Comparison:
    return Comparison(*compare_runs(run_dirs))


def compare_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """The comparison table, and the warnings of reading the runs' records back."""
    rows, warnings = [], []
    for path in run_dirs:
        run = RunDir(path)
        summary = summarize(run.request_records(), run.cell_records()).dropna(subset=["e2e_tok_s_median"])
        nodes = {(c.engine, c.n_spec): c.placement.node for c in run.cell_records() if c.placement is not None}
        warnings += run.warnings
        for key, g in summary.groupby(["engine", "prompt_set", "concurrency"]):
            rows.append(_best(run, nodes, key, g))
        warnings += [w for w in run.warnings if w not in warnings]
    return pd.DataFrame([r for r in rows if r], columns=COLUMNS), warnings


def _best(run: RunDir, nodes: dict[tuple[str, int], str | None], key: tuple[str, str, int],
          g: pd.DataFrame) -> dict[str, Any] | None:
    """The row of one engine, prompt set and concurrency; labelled by the node the best depth ran
    on (a cluster's cells run on several machines), and by the baseline's where it differs."""
    base = g[g["n_spec"] == 0]
    spec = g[g["n_spec"] > 0]
    if base.empty or spec.empty:
        return None
    best = spec.loc[spec["e2e_tok_s_median"].idxmax()]
    engine, prompts, conc = key
    node, base_node = nodes.get((engine, int(best["n_spec"]))), nodes.get((engine, 0))
    machine, base_machine = machine_label(run.node_environment(node)), machine_label(run.node_environment(base_node))
    if base_machine != machine:  # a cluster of unlike nodes: the two sides of the speedup differ
        machine += f"; baseline on {base_machine}"
    where = node if base_node == node else f"{base_node or '-'} / {node or '-'}"
    return {"run": run.path.name, "machine": machine, "node": where or "", "engine": engine, "prompt_set": prompts,
            "concurrency": conc,
            "baseline_tok_s": base["e2e_tok_s_median"].iloc[0], "best_n_spec": int(best["n_spec"]),
            "best_method": best["method"], "best_tok_s": best["e2e_tok_s_median"],
            "best_ci_low": best["e2e_tok_s_ci_low"], "best_ci_high": best["e2e_tok_s_ci_high"],
            "speedup": best["speedup"], "speedup_ci_low": best["speedup_ci_low"],
            "speedup_ci_high": best["speedup_ci_high"], "verdict": best["speedup_verdict"]}


def format_compare(df: pd.DataFrame) -> str:
    if df.empty:
        return "no run has both an n_spec 0 cell and a speculative cell to compare"
    view = pd.DataFrame({
        "run": df["run"], "machine": df["machine"], "node": df["node"], "engine": df["engine"],
        "prompts": df["prompt_set"],
        "conc": df["concurrency"].astype(int), "baseline": df["baseline_tok_s"].map("{:.1f}".format),
        "best": [f"n{n} {m} {v:.1f}" for n, m, v in zip(df["best_n_spec"], df["best_method"], df["best_tok_s"], strict=True)],
        "speedup": [_speedup_text(s, lo, hi) for s, lo, hi in
                    zip(df["speedup"], df["speedup_ci_low"], df["speedup_ci_high"], strict=True)],
        "verdict": df["verdict"].map(lambda v: "-" if v is None or pd.isna(v) else v)})
    if not (df["node"] != "").any():
        view = view.drop(columns="node")  # no run ran on a cluster or side by side
    table: str = view.to_string(index=False)
    return table + "\n" + NOTE + (NODE_NOTE if (df["node"] != "").any() else "")


NOTE = ("speedup: each run's own, from its request pairs (median pair ratio, 95% CI over pairs); runs are not "
        "paired with each other, so read two runs' intervals side by side")


NODE_NOTE = ("\nnode: where the best depth ran (baseline / best where they differ); machine: that node's "
             "environment.json (nodes/<node>/ in the run folder)")


def _speedup_text(s: Any, low: Any, high: Any) -> str:
    """An undefined speedup (a zero baseline) or interval prints as '-', never 'nan'."""
    if s is None or pd.isna(s):
        return "-"
    ci = "-" if low is None or high is None or pd.isna(low) or pd.isna(high) else f"{low:.2f}-{high:.2f}"
    return f"{s:.2f}x ({ci})"
