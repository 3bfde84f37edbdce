"""The category x depth heat map: each cell the typical paired speedup of that category at that
depth (colour on a log scale centred on 1.0x), its 95% interval beneath, and a box round the
depth that "what to run" picks for the category."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm

from orchestrator.analysis.findings import CategoryView

from .charts import save

SPAN = np.log2(4)  # colour saturates at 4x faster or slower


def draw_category_heatmap(view: CategoryView | None, subtitle: str, out_dir: Path) -> list[Path]:
    if view is None:
        return []
    data = view.summary[view.summary["concurrency"].notna() & (view.summary["n_spec"] > 0)]
    panels = sorted({(e, int(c)) for e, c in data[["engine", "concurrency"]].itertuples(index=False)})
    if not panels:
        return []
    rows = sorted(data["prompt_set"].dropna().unique())
    width = max(6.0, 1.3 * data["n_spec"].nunique() + 2.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 0.55 * len(rows) + 2.2), dpi=110,
                             squeeze=False)
    for ax, (engine, conc) in zip(axes[0], panels, strict=True):
        mine = data[(data["engine"] == engine) & (data["concurrency"] == conc)]
        image = _panel(ax, mine, rows, _picks(view.advice, engine, conc))
        ax.set_title(f"{engine}" + (f" · c={conc}" if len({c for _, c in panels}) > 1 else ""), fontsize=10)
    bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.8, pad=0.02)
    ticks = [0.25, 0.5, 1, 2, 4]
    bar.set_ticks(np.log2(ticks).tolist(), labels=[f"{t:g}x" for t in ticks])
    bar.set_label("typical paired speedup over n_spec 0")
    fig.suptitle("Speedup by category and depth (request pairs; box: the depth to run; italic: the interval "
                 f"includes 1.0x, or too few pairs)\n{subtitle}", fontsize=10)
    return save(fig, Path(out_dir) / "speedup_by_category")


def _picks(advice: pd.DataFrame, engine: str, conc: int) -> dict[str, int]:
    if advice.empty:
        return {}
    mine = advice[(advice["engine"] == engine) & (advice["concurrency"] == conc)]
    return dict(zip(mine["prompt_set"], mine["n_spec"].astype(int), strict=True))


def _panel(ax, data: pd.DataFrame, rows: list[str], picks: dict[str, int]):
    depths = sorted(int(n) for n in data["n_spec"].unique())
    grid = np.full((len(rows), len(depths)), np.nan)
    for r in data.itertuples(index=False):
        if pd.notna(r.speedup) and r.speedup > 0:
            grid[rows.index(r.prompt_set), depths.index(int(r.n_spec))] = np.log2(float(r.speedup))
    image = ax.imshow(np.clip(grid, -SPAN, SPAN), cmap="RdBu", norm=TwoSlopeNorm(0, -SPAN, SPAN), aspect="auto")
    for r in data.itertuples(index=False):
        _annotate(ax, rows.index(r.prompt_set), depths.index(int(r.n_spec)), r)
    for cat, n in picks.items():
        if cat in rows and n in depths:
            ax.add_patch(plt.Rectangle((depths.index(n) - 0.5, rows.index(cat) - 0.5), 1, 1, fill=False,
                                       edgecolor="black", linewidth=2.5))
    ax.set_xticks(range(len(depths)), [str(n) for n in depths])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("n_spec (speculative tokens per step)")
    return image


def _annotate(ax, i: int, j: int, r) -> None:
    if pd.isna(r.speedup):
        ax.text(j, i, "no pairs", ha="center", va="center", fontsize=7, color="grey")
        return
    interval = (f"\n[{r.speedup_ci_low:.2f}-{r.speedup_ci_high:.2f}]"
                if pd.notna(r.speedup_ci_low) and pd.notna(r.speedup_ci_high) else "\n(too few pairs)")
    dark = abs(np.log2(float(r.speedup))) > 0.6 * SPAN
    unclear = r.speedup_verdict != "faster" and r.speedup_verdict != "slower"
    ax.text(j, i, f"{r.speedup:.2f}x{interval}", ha="center", va="center", fontsize=7,
            color="white" if dark else "black", style="italic" if unclear else "normal")
