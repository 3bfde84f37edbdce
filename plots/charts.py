"""The three PNG charts: tok/s, speedup and acceptance rate against n_spec."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

CHARTS = {
    "tok_s_vs_n_spec.png": ("Output tokens/s by speculation depth", "e2e output tok/s (median, p10-p90)"),
    "speedup_vs_n_spec.png": ("Speedup over no speculation", "speedup (x, e2e tok/s / n_spec 0)"),
    "acceptance_vs_n_spec.png": ("Draft acceptance rate", "accepted / drafted tokens"),
}


def draw_charts(summary: pd.DataFrame, subtitle: str, out_dir: Path) -> list[Path]:
    data = summary.dropna(subset=["concurrency"])
    many_conc = data["concurrency"].nunique() > 1
    paths = []
    for name, (title, ylabel) in CHARTS.items():
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        for label, g in data.groupby(["engine", "prompt_set", "concurrency"], sort=True):
            _plot_series(ax, name, g.sort_values("n_spec"), _label(label, many_conc))
        _decorate(ax, name, title, subtitle, ylabel, data)
        path = Path(out_dir) / name
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def _label(key: tuple, many_conc: bool) -> str:
    engine, prompts, conc = key
    return f"{engine} · {prompts} prompts" + (f" · c={int(conc)}" if many_conc else "")


def _plot_series(ax, chart: str, g: pd.DataFrame, label: str) -> None:
    x = g["n_spec"].astype(int)
    if chart == "tok_s_vs_n_spec.png":
        y = g["e2e_tok_s_median"].astype(float)
        err = [(y - g["e2e_tok_s_p10"].astype(float)).clip(lower=0),
               (g["e2e_tok_s_p90"].astype(float) - y).clip(lower=0)]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=label)
    elif chart == "speedup_vs_n_spec.png":
        ax.plot(x, g["speedup"].astype(float), marker="o", label=label)
    else:
        spec = g[g["n_spec"] > 0]
        ax.plot(spec["n_spec"].astype(int), spec["acceptance_rate"].astype(float), marker="o", label=label)


def _decorate(ax, chart: str, title: str, subtitle: str, ylabel: str, data: pd.DataFrame) -> None:
    ax.set_title(f"{title}\n{subtitle}", fontsize=10)
    ax.set_xlabel("n_spec (speculative tokens per step; 0 = off)")
    ax.set_ylabel(ylabel)
    ticks = sorted(int(n) for n in data["n_spec"].unique()) if len(data) else []
    ax.set_xticks(ticks)
    if chart == "speedup_vs_n_spec.png":
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    if chart == "acceptance_vs_n_spec.png":
        ax.set_ylim(0, 1.05)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
