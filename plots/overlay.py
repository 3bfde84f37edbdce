"""Published reference points drawn onto a run's tok/s and speedup charts."""

from __future__ import annotations

import pandas as pd


def published_overlay(found: list[tuple[str, pd.DataFrame]]):
    """The function that draws `found` (analysis/reference.py: published_for) onto a chart, or None."""
    if not found:
        return None

    def overlay(ax, chart):
        column = {"e2e_tok_s_median": "mean_tok_s", "speedup": "speedup"}.get(chart.y)
        if column is None:
            return
        for name, means in found:
            ax.plot(means["n_spec"], means[column], linestyle=":", marker="s", color="black",
                    label=f"published ({name}'s model, RTX PRO 6000)")

    return overlay
