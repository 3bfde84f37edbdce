"""The `orch compare` chart: baseline and best tok/s per engine and run, with intervals."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .charts import save  # noqa: E402


def draw_compare(df: pd.DataFrame, out: Path) -> list[Path]:
    labels = [f"{r.engine} · {r.prompt_set}\n{r.run}\n{r.machine[:40]}" for r in df.itertuples()]
    x = np.arange(len(df))
    fig, ax = plt.subplots(figsize=(max(6, 2.6 * len(df)), 5), dpi=110)
    ax.bar(x - 0.2, df["baseline_tok_s"], 0.4, label="n_spec 0", color="tab:grey")
    low, high = (pd.to_numeric(df[c], errors="coerce") for c in ("best_ci_low", "best_ci_high"))
    err = [(df["best_tok_s"] - low).clip(lower=0).fillna(0), (high - df["best_tok_s"]).clip(lower=0).fillna(0)]
    ax.bar(x + 0.2, df["best_tok_s"], 0.4, yerr=err, capsize=4, label="best n_spec", color="tab:blue")
    for i, r in enumerate(df.itertuples()):
        top = max(r.best_tok_s, r.best_ci_high if pd.notna(r.best_ci_high) else 0)
        speedup = f"{r.speedup:.2f}x" if pd.notna(r.speedup) else "no speedup (baseline 0)"
        ax.text(i + 0.2, top * 1.02, f"n{r.best_n_spec} {speedup}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("median e2e tok/s (95% CI)")
    ax.set_title("Baseline against best speculation setting, per run")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    Path(out).mkdir(parents=True, exist_ok=True)
    return save(fig, Path(out) / "compare")
