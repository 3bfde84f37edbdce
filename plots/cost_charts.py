"""energy_per_token_vs_n_spec.png: what a token costs at each depth, and how close each depth
runs to the hardware's single-stream decode limit (analysis/cost.py's columns)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .charts import Chart, _label, _series, depth_panel, plt, save

ENERGY = Chart("energy_per_token_vs_n_spec", "Energy per output token", "joules per output token (median, 95% CI)",
               "j_per_token_median", "j_per_token_ci_low", "j_per_token_ci_high")
CPU = Chart("", "CPU time per output token", "server CPU core-seconds per output token (median, 95% CI)",
            "cpu_s_per_token_median", "cpu_s_per_token_ci_low", "cpu_s_per_token_ci_high")
SHARE = Chart("", "Decode rate as a share of the roofline", "decode tok/s / (bandwidth / bytes of weights)",
              "roofline_share", "roofline_share_ci_low", "roofline_share_ci_high")


def draw_cost(summary: pd.DataFrame, subtitle: str, out_dir: Path) -> list[Path]:
    data = summary.dropna(subset=["concurrency"])
    if data.empty or "cpu_s_per_token_median" not in data or data[
            ["j_per_token_median", "cpu_s_per_token_median", "roofline_share"]].isna().all().all():
        return []
    energy = pd.to_numeric(data["j_per_token_median"], errors="coerce").notna().any()
    cost = ENERGY if energy else CPU
    many_conc = data["concurrency"].nunique() > 1
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    for key, g in data.groupby(["engine", "prompt_set", "concurrency"], sort=True):
        g = g.sort_values("n_spec")
        label = _label(key, many_conc)
        _series(left, cost, g, label)
        _series(right, SHARE, g, label)
    depths = sorted(int(n) for n in data["n_spec"].unique())
    for ax, chart in ((left, cost), (right, SHARE)):
        depth_panel(ax, chart, depths, "n_spec (speculative tokens per step; 0 = off)", "best")
    high = pd.to_numeric(data["roofline_share_ci_high"], errors="coerce").max()
    right.set_ylim(0, max(1.15, 1.1 * high) if pd.notna(high) else 1.15)
    right.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    right.text(0.01, 1.0, " the limit, one token per read of the weights", transform=right.get_yaxis_transform(),
               va="bottom", fontsize=7, color="grey")
    fig.subplots_adjust(top=0.80)
    fig.suptitle(f"Energy per token by n_spec{'' if energy else ': ' + _no_energy(data)}\n"
                 f"{_basis(data)}\n{subtitle}", fontsize=9)
    return save(fig, Path(out_dir) / ENERGY.file)


def _no_energy(data: pd.DataFrame) -> str:
    why = next((str(s) for s in data["energy_source"].dropna() if str(s).startswith("unavailable")), "")
    short = why.removeprefix("unavailable: ").split(" (")[0][:80] or "no energy counter sampled"
    return f"no energy reading here ({short}); CPU core-seconds instead"


def _basis(data: pd.DataFrame) -> str:
    bases = sorted({str(b) for b in data["roofline_basis"].dropna()})
    return "roofline: " + ("; ".join(bases)[:200] if bases else "unknown")
