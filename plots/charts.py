"""The charts, PNG with an SVG beside each. Error bars are bootstrap 95% intervals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
matplotlib.rcParams["svg.hashsalt"] = "orch"  # stable ids: a redrawn SVG is byte-identical
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from orchestrator.analysis.findings import METRICS_SOURCE, PAIRED  # noqa: E402
from orchestrator.common.safefs import replacing  # noqa: E402


@dataclass(frozen=True)
class Chart:
    file: str
    title: str
    ylabel: str
    y: str
    low: str
    high: str


CHARTS = [
    Chart("tok_s_vs_n_spec", "Output tokens/s by speculation depth", "e2e output tok/s (median, 95% CI)",
          "e2e_tok_s_median", "e2e_tok_s_ci_low", "e2e_tok_s_ci_high"),
    Chart("speedup_vs_n_spec", "Speedup over no speculation (request pairs)",
          "speedup (x, median of paired e2e ratios; 95% CI)",
          "speedup", "speedup_ci_low", "speedup_ci_high"),
    Chart("acceptance_vs_n_spec", "Draft acceptance rate", "accepted / drafted tokens (95% CI)",
          "acceptance_rate", "acceptance_ci_low", "acceptance_ci_high"),
]


def draw_charts(summary: pd.DataFrame, subtitle: str, out_dir: Path, overlay=None) -> list[Path]:
    """`overlay(ax, chart)` may add reference points to a chart."""
    data = summary.dropna(subset=["concurrency"])
    many_conc = data["concurrency"].nunique() > 1
    paths = []
    for chart in CHARTS:
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        for key, g in data.groupby(["engine", "prompt_set", "concurrency"], sort=True):
            g = g.sort_values("n_spec")
            label = _label(key, many_conc)
            if chart.y == "acceptance_rate":
                g = g[g["n_spec"] > 0]
                if (g.get("acceptance_source") == METRICS_SOURCE).any():
                    label += " (server /metrics, whole cell)"
            _series(ax, chart, g, label)
        if overlay is not None:
            overlay(ax, chart)
        _decorate(ax, chart, subtitle, data)
        paths += save(fig, Path(out_dir) / chart.file)
    return paths


PREFILL = Chart("prefill_decode_vs_n_spec", "Prefill", "prefill tok/s (median, 95% CI)",
                "prefill_tok_s_median", "prefill_tok_s_ci_low", "prefill_tok_s_ci_high")
SERVER_DECODE = Chart("", "Decode", "decode tok/s (median, 95% CI)", "server_decode_tok_s_median",
                      "server_decode_tok_s_ci_low", "server_decode_tok_s_ci_high")
STREAM_DECODE = Chart("", "Decode", "decode tok/s (median, 95% CI)", "decode_tok_s_median",
                      "decode_tok_s_ci_low", "decode_tok_s_ci_high")


def draw_phase_rates(summary: pd.DataFrame, subtitle: str, out_dir: Path) -> list[Path]:
    """Prefill and decode tok/s by depth, side by side: the server's own timings where it reports
    them (llama.cpp), else prefill from TTFT and decode from the stream, marked in the legend."""
    data = summary.dropna(subset=["concurrency"])
    if data.empty or data["prefill_tok_s_median"].isna().all():
        return []
    many_conc = data["concurrency"].nunique() > 1
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    for key, g in data.groupby(["engine", "prompt_set", "concurrency"], sort=True):
        g = g.sort_values("n_spec")
        label = _label(key, many_conc)
        ttft = g["prefill_source"].fillna("").str.contains("ttft").any()
        _series(left, PREFILL, g, label + (" (from TTFT)" if ttft else ""))
        timed = g["server_decode_tok_s_median"].notna().any()
        _series(right, SERVER_DECODE if timed else STREAM_DECODE, g, label + ("" if timed else " (stream)"))
    depths = sorted(int(n) for n in data["n_spec"].unique())
    for ax, chart in ((left, PREFILL), (right, SERVER_DECODE)):
        depth_panel(ax, chart, depths, "n_spec (speculative tokens per step)", "lower right")
    fig.subplots_adjust(top=0.84)
    fig.suptitle("Prefill and decode rates by speculation depth (the server's timings; else from TTFT and the "
                 f"stream, marked)\n{subtitle}", fontsize=10)
    return save(fig, Path(out_dir) / PREFILL.file)


def depth_panel(ax, chart: Chart, depths: list[int], xlabel: str, legend_loc: str) -> None:
    """One panel of a two-panel chart by depth: its title, axes from 0, grid and legend."""
    ax.set_title(chart.title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_xticks(depths)
    ax.set_ylabel(chart.ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc=legend_loc)


def draw_pairs(pairs: pd.DataFrame, summary: pd.DataFrame, subtitle: str, out_dir: Path) -> list[Path]:
    """Every request pair a point (speculative / n_spec 0 e2e tok/s, log scale), one panel per
    engine, prompt sets side by side at each depth; the bar is the cell's typical speedup with its
    95% interval."""
    ok = pairs[pairs["status"] == PAIRED] if len(pairs) else pairs
    engines = sorted(ok["engine"].unique()) if len(ok) else []
    fig, axes = plt.subplots(1, max(1, len(engines)), figsize=(max(8, 5 * len(engines)), 5), dpi=110,
                             sharey=True, squeeze=False)
    for ax, engine in zip(axes[0], engines, strict=False):
        _pair_panel(ax, ok[ok["engine"] == engine], summary[summary["engine"] == engine], engine)
    if not engines:
        axes[0][0].text(0.5, 0.5, "no speculative request with a twin at n_spec 0", transform=axes[0][0].transAxes,
                        ha="center")
    axes[0][0].set_ylabel("speculative / n_spec 0 e2e tok/s, per request pair (log)")
    fig.suptitle(f"Speedup per request pair (same prompt, repeat and concurrency)\n{subtitle}", fontsize=10)
    return save(fig, Path(out_dir) / "paired_speedup_vs_n_spec")


RATIO_TICKS = [1 / 16, 1 / 8, 1 / 4, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 8, 16]


def _pair_panel(ax, ok: pd.DataFrame, summary: pd.DataFrame, engine: str) -> None:
    groups = sorted({(p, c) for p, c in ok[["prompt_set", "concurrency"]].itertuples(index=False)})
    depths = sorted(int(n) for n in ok["n_spec"].unique())
    width = 0.7 / max(1, len(groups))
    many_conc = len({c for _, c in groups}) > 1
    for gi, (prompts, conc) in enumerate(groups):
        offset = (gi - (len(groups) - 1) / 2) * width
        color = f"C{gi}"
        mine = ok[(ok["prompt_set"] == prompts) & (ok["concurrency"] == conc)]
        for di, n in enumerate(depths):
            r = mine.loc[mine["n_spec"] == n, "ratio"].astype(float)
            jitter = (np.linspace(-0.3, 0.3, len(r)) if len(r) > 1 else np.zeros(len(r))) * width
            ax.scatter(di + offset + jitter, r, s=12, alpha=0.5, color=color,
                       label=f"{prompts}" + (f" · c={int(conc)}" if many_conc else "") if di == 0 else None)
            row = summary[(summary["n_spec"] == n) & (summary["prompt_set"] == prompts)
                          & (summary["concurrency"] == conc)]
            if len(row) and pd.notna(row["speedup"].iloc[0]):
                _typical(ax, di + offset, row.iloc[0], color, width)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(depths)), [str(n) for n in depths])
    ax.set_xlabel("n_spec (speculative tokens per step)")
    ax.set_title(engine, fontsize=10)
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(RATIO_TICKS))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8, title="prompts (bar: typical, 95% CI)", title_fontsize=8)


def _typical(ax, x: float, row, color: str, width: float) -> None:
    y = float(row["speedup"])
    low, high = row["speedup_ci_low"], row["speedup_ci_high"]
    ax.hlines(y, x - width / 2, x + width / 2, color=color, linewidth=2.5)
    if pd.notna(low) and pd.notna(high):
        ax.vlines(x, float(low), float(high), color=color, linewidth=1.5)


def draw_load(summary: pd.DataFrame, subtitle: str, out_dir: Path) -> list[Path]:
    """Typical paired speedup against concurrency, one line per depth and prompt set, one panel per
    engine; drawn only when some depth was measured at two or more levels."""
    data = summary[(summary["n_spec"] > 0) & summary["concurrency"].notna() & summary["speedup"].notna()]
    levels = data.groupby(["engine", "n_spec", "prompt_set"])["concurrency"].nunique()
    if data.empty or levels.max() < 2:
        return []
    engines = sorted(data["engine"].unique())
    fig, axes = plt.subplots(1, len(engines), figsize=(max(8, 5 * len(engines)), 5), dpi=110, sharey=True,
                             squeeze=False)
    for ax, engine in zip(axes[0], engines, strict=True):
        for (n, prompts), g in data[data["engine"] == engine].groupby(["n_spec", "prompt_set"], sort=True):
            _series(ax, SPEEDUP_BY_LOAD, g.sort_values("concurrency"), f"n_spec {int(n)} · {prompts}",
                    x="concurrency")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(int(c) for c in data.loc[data["engine"] == engine, "concurrency"].unique()))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("concurrent streams")
        ax.set_title(engine, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(SPEEDUP_BY_LOAD.ylabel)
    fig.suptitle(f"{SPEEDUP_BY_LOAD.title}\n{subtitle}", fontsize=10)
    return save(fig, Path(out_dir) / SPEEDUP_BY_LOAD.file)


SPEEDUP_BY_LOAD = Chart("speedup_vs_concurrency", "Where speculation stops paying under load",
                        "speedup (x, median of paired ratios; 95% CI)", "speedup", "speedup_ci_low",
                        "speedup_ci_high")


def draw_acceptance_by_position(cells, subtitle: str, out_dir: Path) -> list[Path]:
    """Share of drafts whose token at each position was accepted, from the /metrics deltas of each
    speculative cell's measured window (cells.jsonl `server_metrics`, the newest line of each cell),
    one line per depth; no chart when no cell has per-position counters."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    lines = 0
    many_conc = len({conc for c in cells for conc in (c.server_metrics or {})}) > 1
    for c in sorted(cells, key=lambda c: (c.engine, c.n_spec)):
        for conc, window in sorted((c.server_metrics or {}).items(), key=lambda kv: int(kv[0])):  # keys checked
            per_pos = _per_position(window)
            if c.n_spec == 0 or not per_pos:
                continue
            label = f"{c.engine} n_spec {c.n_spec}" + (f" · c={conc}" if many_conc else "")
            ax.plot([p + 1 for p, _ in per_pos], [v for _, v in per_pos], marker="o", markersize=3, label=label)
            lines += 1
    ax.set_title(f"Acceptance by draft position (server /metrics, measured windows)\n{subtitle}", fontsize=10)
    ax.set_xlabel("draft position (1 = first drafted token)")
    ax.set_ylabel("share of drafts with this position accepted")
    ax.set_ylim(0, 1.05)
    ax.grid(True, alpha=0.3)
    if not lines:
        plt.close(fig)
        return []
    ax.legend(fontsize=8)
    return save(fig, Path(out_dir) / "acceptance_by_position")


def _per_position(window) -> list[tuple[int, float]]:
    """(position, share) from a window's per_pos_acceptance, positions as whole numbers, shares
    finite and within 0..1; anything else in a record read back is left out."""
    raw = getattr(window, "per_pos_acceptance", None) if window is not None else None
    if not isinstance(raw, dict):
        return []
    out = []
    for pos, v in raw.items():
        if isinstance(pos, str) and pos.isascii() and pos.isdecimal() and len(pos) <= 6 and isinstance(v, (int, float)) \
                and not isinstance(v, bool) and 0 <= v <= 1:
            out.append((int(pos), float(v)))
    return sorted(out)


def draw_model(table: pd.DataFrame, subtitle: str, out_dir: Path) -> list[Path]:
    """Predicted against measured tok/s by depth (model.csv), one panel per engine and
    concurrency level, with Leviathan et al.'s constant-acceptance curve as the reference."""
    groups = list(table.groupby(["engine", "concurrency"], sort=True)) if len(table) else []
    if not groups:
        return []
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 5), dpi=110, squeeze=False)
    for ax, ((engine, conc), g) in zip(axes[0], groups, strict=True):
        g = g.sort_values("n_spec")
        ax.plot(g["n_spec"], g["predicted_tok_s"].astype(float), color="C0", label="model: plain + drafted steps, fitted")
        ax.plot(g["n_spec"], g["reference_tok_s"].astype(float), color="C7", linestyle="--",
                label="Leviathan et al. (constant acceptance)")
        m = g.dropna(subset=["measured_tok_s"])
        low = (m["measured_tok_s"] - m["measured_ci_low"].fillna(m["measured_tok_s"])).clip(lower=0)
        high = (m["measured_ci_high"].fillna(m["measured_tok_s"]) - m["measured_tok_s"]).clip(lower=0)
        ax.errorbar(m["n_spec"], m["measured_tok_s"].astype(float), yerr=[low.astype(float), high.astype(float)],
                    fmt="o", color="C1", capsize=3, label="measured (median, 95% CI)")
        ax.set_title(f"{engine} · c={int(conc)}", fontsize=10)
        ax.set_xlabel("n_spec (speculative tokens per step)")
        ax.set_ylabel("e2e output tok/s (median of requests)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Speedup model: predicted vs measured tok/s\n{subtitle}", fontsize=10)
    fig.tight_layout()
    return save(fig, Path(out_dir) / "model_vs_measured")


def draw_acceptance_length(summary: pd.DataFrame, subtitle: str, out_dir: Path) -> list[Path]:
    """Server-side mean acceptance length (1 + accepted / drafts) from the /metrics deltas."""
    data = summary.dropna(subset=["mean_acceptance_length"]).drop_duplicates(["cell_id", "concurrency"])
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    many_conc = data["concurrency"].nunique() > 1
    for (engine, conc), g in data.groupby(["engine", "concurrency"]):
        g = g.sort_values("n_spec")
        label = engine + (f" · c={int(conc)}" if many_conc else "")
        ax.plot(g["n_spec"].astype(int), g["mean_acceptance_length"].astype(float), marker="o", label=label)
    ax.set_title(f"Mean acceptance length (server /metrics, all prompts)\n{subtitle}", fontsize=10)
    ax.set_xlabel("n_spec (speculative tokens per step; 0 = off)")
    ax.set_ylabel("tokens per verification step (1 + accepted / drafts)")
    if len(data):
        ax.set_xticks(sorted(int(n) for n in data["n_spec"].unique()))
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no speculation counters in /metrics", transform=ax.transAxes, ha="center")
    ax.grid(True, alpha=0.3)
    return save(fig, Path(out_dir) / "acceptance_length_vs_n_spec")


def draw_lossless(cells: pd.DataFrame, subtitle: str, out_dir: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    if len(cells):
        ax.bar(cells["cell_id"], 100 * cells["share_identical"].astype(float), color="tab:green")
        for i, r in enumerate(cells.itertuples()):
            ax.text(i, 100 * r.share_identical + 1, f"{r.identical}/{r.checked}", ha="center", fontsize=8)
        ax.tick_params(axis="x", labelrotation=20)
    else:
        ax.text(0.5, 0.5, "no speculative cell with a baseline to check against", transform=ax.transAxes, ha="center")
    ax.set_ylim(0, 110)
    ax.set_ylabel("outputs identical to n_spec 0 (%)")
    ax.set_title(f"Lossless check at temperature 0\n{subtitle}", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, Path(out_dir) / "lossless")


def save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    # Each replaced whole, never written through a link in the folder (common/safefs.py).
    with replacing(paths[0].parent, paths[0].name, binary=True) as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    with replacing(paths[1].parent, paths[1].name, binary=True) as f:
        fig.savefig(f, format="svg", bbox_inches="tight", metadata={"Date": None})  # reproducible SVG
    plt.close(fig)
    return paths


def _label(key: tuple, many_conc: bool) -> str:
    engine, prompts, conc = key
    return f"{engine} · {prompts} prompts" + (f" · c={int(conc)}" if many_conc else "")


def _series(ax, chart: Chart, g: pd.DataFrame, label: str, x: str = "n_spec") -> None:
    y = pd.to_numeric(g[chart.y], errors="coerce")
    low = pd.to_numeric(g[chart.low], errors="coerce") if chart.low in g else y
    high = pd.to_numeric(g[chart.high], errors="coerce") if chart.high in g else y
    err = [(y - low).clip(lower=0).fillna(0), (high - y).clip(lower=0).fillna(0)]
    ax.errorbar(g[x].astype(int), y, yerr=err, marker="o", capsize=4, label=label)


def _decorate(ax, chart: Chart, subtitle: str, data: pd.DataFrame) -> None:
    ax.set_title(f"{chart.title}\n{subtitle}", fontsize=10)
    ax.set_xlabel("n_spec (speculative tokens per step; 0 = off)")
    ax.set_ylabel(chart.ylabel)
    if len(data):
        ax.set_xticks(sorted(int(n) for n in data["n_spec"].unique()))
    if chart.y == "speedup":
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    if chart.y == "acceptance_rate":
        ax.set_ylim(0, 1.05)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
