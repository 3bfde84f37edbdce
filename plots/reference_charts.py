"""`orch reference`: the published comparison as bar charts, recomputed from its rows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from orchestrator.analysis.findings import HARDWARE, Setup  # noqa: E402

from .charts import save  # noqa: E402


def draw_reference(setups: list[Setup], out_dir: Path) -> list[Path]:
    fig, axes = plt.subplots(1, len(setups), figsize=(15, 4.8), dpi=110, sharey=True)
    for ax, setup in zip(axes, setups, strict=True):
        title, limit, m = setup.title, setup.limit, setup.rows
        labels = ["off" if n == 0 else str(n) for n in m["n_spec"]]
        bars = ax.bar(labels, m["mean_tok_s"], color=["tab:grey"] + ["tab:blue"] * (len(m) - 1))
        for bar, v, s in zip(bars, m["mean_tok_s"], m["speedup"], strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 2, f"{v:.1f}" + (f"\n{s:.2f}x" if s != 1 else ""),
                    ha="center", va="bottom", fontsize=9)
        ax.axhline(limit, color="tab:red", linestyle="--", linewidth=1)
        ax.text(-0.45, limit + 1.5, f"roofline {limit:.0f} tok/s", color="tab:red", ha="left", va="bottom",
                fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("n_spec (speculative tokens)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("mean e2e tok/s (completion tokens / wall time)")
    axes[0].set_ylim(0, 165)
    fig.subplots_adjust(top=0.84)
    fig.suptitle(f"Published MTP comparison, recomputed from per-request rows · {HARDWARE}\n"
                 "dashed: single-stream decode limit without speculation = bandwidth / bytes of weights",
                 fontsize=11)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return save(fig, out / "published_reference")


def reference_text(setups: list[Setup]) -> str:
    """`orch reference`'s lines: each setup's mean rate per depth, its spread, speedup and share of the limit."""
    lines = []
    for setup in setups:
        lines.append(setup.title)
        lines += [f"  n_spec {'off' if r.n_spec == 0 else r.n_spec:>3}: {r.mean_tok_s:6.1f} tok/s "
                  f"({r.runs} runs, {r.min_tok_s:.1f}-{r.max_tok_s:.1f})  {r.speedup:.2f}x  "
                  f"{r.share:.2f} of the roofline" for r in setup.rows.itertuples()]
        lines.append(f"  roofline: {setup.limit:.1f} tok/s single-stream decode limit = {setup.basis}")
    return "\n".join(lines)
