"""Published reference points drawn onto a run's tok/s and speedup charts."""

from __future__ import annotations

from orchestrator.analysis.reference import matching, published_means, published_runs
from orchestrator.results.rundir import RunDir


def published_overlay(run: RunDir):
    """Return (overlay function or None, a line saying what matched)."""
    runs = published_runs()
    found = []
    for name, eng in run.environment().get("engines", {}).items():
        if not eng.get("model"):
            continue  # no model recorded: "" would match every published row
        rows = matching(runs, eng.get("kind", ""), eng["model"])
        if len(rows):
            found.append((name, published_means(rows)))
    if not found:
        models = ", ".join(e.get("model", "?") for e in run.environment().get("engines", {}).values())
        return None, f"reference: no published figures for {models or 'this run'}; charts drawn without overlay"

    def overlay(ax, chart):
        column = {"e2e_tok_s_median": "mean_tok_s", "speedup": "speedup"}.get(chart.y)
        if column is None:
            return
        for name, means in found:
            ax.plot(means["n_spec"], means[column], linestyle=":", marker="s", color="black",
                    label=f"published ({name}'s model, RTX PRO 6000)")

    return overlay, "reference: published figures overlaid for " + ", ".join(n for n, _ in found)
