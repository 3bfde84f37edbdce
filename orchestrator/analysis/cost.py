"""What each summary row cost, from the cells' telemetry, and how close it ran to the hardware's
decode limit (the roofline). Per-request figures (CPU seconds and joules per output token,
tokens per joule) are medians over the row's requests with bootstrap intervals; window figures
(utilization, power, peak memory) are the cell's measured window at that concurrency, shared by
every prompt set measured in it. A reading that was not taken stays empty and its reason is in
the row's `energy_source` / `gpu`: never a zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from orchestrator.analysis.stats import median_ci
from orchestrator.types.records import CellRecord, RequestCost, Roofline, WindowTelemetry
from orchestrator.telemetry.sources import NO_GPU

GPU_FIELDS = ["gpu_mem_peak_mb", "gpu_mem_headroom_mb", "gpu_power_w_mean", "gpu_util_pct_mean", "gpu_sm_mhz_mean", "gpu_temp_c_peak"]
COLUMNS = [
    "cpu_util", "rss_peak_mb",
    "cpu_s_per_token_median", "cpu_s_per_token_ci_low", "cpu_s_per_token_ci_high",
    "energy_source", "power_w_mean", "j_per_token_window",
    "j_per_token_median", "j_per_token_ci_low", "j_per_token_ci_high",
    "tok_per_j_median", "tok_per_j_ci_low", "tok_per_j_ci_high",  # tokens per second per watt
    "gpu", *GPU_FIELDS,
    "roofline_tok_s", "roofline_share", "roofline_share_ci_low", "roofline_share_ci_high", "roofline_basis",
]


def add_cost(out: pd.DataFrame, df: pd.DataFrame, cells: list[CellRecord]) -> pd.DataFrame:
    """`out`: summary rows; `df`: their measured requests (summary.measured_frame)."""
    windows, costs = _windows(cells)
    tokens = ({(c, k): t for c, k, t in zip(df["cell_id"], df["key"], pd.to_numeric(df["completion_tokens"],
                                                                                    errors="coerce"), strict=True)}
              if len(df) else {})
    keys = df.groupby(["cell_id", "concurrency", "prompt_set"])["key"].apply(list).to_dict() if len(df) else {}
    ok = set(zip(df.loc[df["ok"], "cell_id"], df.loc[df["ok"], "key"], strict=True)) if len(df) else set()
    roof = {c.cell_id: c.roofline for c in cells if c.roofline is not None}
    rows = []
    for r in out.itertuples(index=False):
        conc = None if pd.isna(r.concurrency) else int(r.concurrency)
        mine = [(k, costs[r.cell_id][k]) for k in keys.get((r.cell_id, conc, r.prompt_set), [])
                if (r.cell_id, k) in ok and k in costs.get(r.cell_id, {})]
        window = windows.get((r.cell_id, conc)) if conc is not None else None
        row = _window_figures(window)
        # the whole window's joules, idle gaps included, over the tokens of the requests that ran in
        # it (a resumed cell's window holds only the requests it re-ran)
        made = sum(tokens.get((r.cell_id, k)) or 0 for k in (window.per_request if window else ())
                   if (r.cell_id, k) in ok)
        if window is not None and window.energy_j is not None and made:
            row["j_per_token_window"] = window.energy_j / made
        row.update(_per_token(mine, {k: tokens.get((r.cell_id, k)) for k, _ in mine}))
        row.update(_roofline(roof.get(r.cell_id), r.decode_tok_s_median, r.decode_tok_s_ci_low, r.decode_tok_s_ci_high))
        rows.append(row)
    figures = pd.DataFrame(rows, columns=COLUMNS, index=out.index).astype(object)
    return out.drop(columns=[c for c in COLUMNS if c in out]).join(figures)


Windows = dict[tuple[str, int], WindowTelemetry]  # (cell, concurrency): its window
Costs = dict[str, dict[str, RequestCost]]  # cell: its requests' costs, by request key


def _windows(cells: list[CellRecord]) -> tuple[Windows, Costs]:
    """Per (cell, concurrency) its newest window; per cell every request's cost (newest wins)."""
    windows: Windows = {}
    costs: Costs = {}
    for c in cells:
        for conc, w in (c.telemetry or {}).items():
            w = w if isinstance(w, WindowTelemetry) else WindowTelemetry.model_validate(w)
            windows[(c.cell_id, int(conc))] = w
            costs.setdefault(c.cell_id, {}).update(
                {k: v if isinstance(v, RequestCost) else RequestCost.model_validate(v) for k, v in w.per_request.items()})
    return windows, costs


def _window_figures(w: WindowTelemetry | None) -> dict[str, Any]:
    if w is None:
        return {}
    out: dict[str, Any] = {"cpu_util": w.cpu_util, "rss_peak_mb": None if w.rss_peak_b is None else w.rss_peak_b / 1e6,
           "energy_source": w.energy_source, "power_w_mean": w.power_mean_w, "gpu": w.gpu}
    if not w.gpus:  # "no GPU" where there is none; a GPU not read or not seen leaves them empty
        return out | ({f: NO_GPU for f in GPU_FIELDS} if str(w.gpu).startswith(NO_GPU) else {})
    gpus = w.gpus
    headroom = [g.mem_total_b - g.mem_peak_b for g in gpus if g.mem_total_b is not None and g.mem_peak_b is not None]
    out.update(gpu_mem_peak_mb=_total([g.mem_peak_b for g in gpus], 1e6),
               gpu_mem_headroom_mb=_total(headroom, 1e6),
               gpu_power_w_mean=_total([g.power_mean_w for g in gpus]),  # the cell's GPUs together
               gpu_util_pct_mean=_avg([g.util_pct_mean for g in gpus]),
               gpu_sm_mhz_mean=_avg([g.sm_mhz_mean for g in gpus]),
               gpu_temp_c_peak=max((g.temp_c_peak for g in gpus if g.temp_c_peak is not None), default=None))
    return out


def _total(values: Iterable[float | None], scale: float = 1.0) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / scale if known else None


def _avg(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _per_token(mine: list[tuple[str, RequestCost]], tokens: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stem, attr in (("cpu_s_per_token", "cpu_s"), ("j_per_token", "energy_j")):
        vals = pd.Series([getattr(c, attr) / tokens[k] for k, c in mine
                          if getattr(c, attr) is not None and tokens.get(k) and tokens[k] > 0], dtype=float)
        out[f"{stem}_median"] = vals.median() if len(vals) else None
        out[f"{stem}_ci_low"], out[f"{stem}_ci_high"] = median_ci(vals)
    per_j = pd.Series([tokens[k] / c.energy_j for k, c in mine if c.energy_j and tokens.get(k)], dtype=float)
    out["tok_per_j_median"] = per_j.median() if len(per_j) else None
    out["tok_per_j_ci_low"], out["tok_per_j_ci_high"] = median_ci(per_j)
    return out


def _roofline(roof: Roofline | None, decode: Any, low: Any, high: Any) -> dict[str, Any]:
    if roof is None:
        return {}
    if not (roof.limit_tok_s and roof.weight_bytes and roof.bandwidth_gb_s):
        return {"roofline_basis": f"unknown: {roof.unknown or 'no limit recorded'}"}
    limit = roof.limit_tok_s

    def share(v: Any) -> float | None:
        return None if v is None or pd.isna(v) else float(v) / limit

    return {"roofline_tok_s": roof.limit_tok_s, "roofline_share": share(decode),
            "roofline_share_ci_low": share(low), "roofline_share_ci_high": share(high),
            "roofline_basis": (f"{roof.weight_bytes / 1e9:.3g} GB of weights ({roof.weight_source}) / "
                               f"{roof.bandwidth_gb_s:.4g} GB/s ({roof.bandwidth_source})")}


def _fmt(v: Any, f: str) -> str:
    if isinstance(v, str):
        return v
    return "-" if v is None or pd.isna(v) else f.format(v)


def _with_ci(r: pd.Series, stem: str, f: str, median: str = "_median") -> str:
    text = _fmt(r[f"{stem}{median}"], f)
    lo, hi = r[f"{stem}_ci_low"], r[f"{stem}_ci_high"]
    if text == "-" or lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return text
    return f"{text} [{f.format(lo)}-{f.format(hi)}]"


def cost_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """One line per summary row with telemetry or a roofline: what its tokens cost and its share
    of the decode limit (intervals: bootstrap over the row's requests)."""
    rows = summary[summary["concurrency"].notna() & (summary["cpu_util"].notna() | summary["roofline_basis"].notna())]
    gpu = rows["gpu_mem_peak_mb"].map(lambda v: not isinstance(v, str)).any() if len(rows) else False
    out = []
    for _, r in rows.iterrows():
        line = {"engine": r["engine"], "n_spec": r["n_spec"], "conc": r["concurrency"], "prompts": r["prompt_set"],
                "CPU cores busy": _fmt(r["cpu_util"], "{:.2f}"), "CPU s/token": _with_ci(r, "cpu_s_per_token", "{:.4f}"),
                "RSS MB": _fmt(r["rss_peak_mb"], "{:.0f}"), "J/token": _with_ci(r, "j_per_token", "{:.3f}"),
                "tok/s/W": _with_ci(r, "tok_per_j", "{:.2f}"), "W": _fmt(r["power_w_mean"], "{:.0f}")}
        if gpu:
            line.update({"GPU MB": _fmt(r["gpu_mem_peak_mb"], "{:.0f}"), "GPU MB free": _fmt(r["gpu_mem_headroom_mb"], "{:.0f}"),
                         "GPU util %": _fmt(r["gpu_util_pct_mean"], "{:.0f}"),
                         "SM MHz": _fmt(r["gpu_sm_mhz_mean"], "{:.0f}"), "GPU °C": _fmt(r["gpu_temp_c_peak"], "{:.0f}")})
        line.update({"limit tok/s": _fmt(r["roofline_tok_s"], "{:.0f}"),
                     "decode / limit": _with_ci(r, "roofline_share", "{:.2f}", "")})
        out.append(line)
    return pd.DataFrame(out)


def cost_notes(summary: pd.DataFrame) -> list[str]:
    """What the cost table's figures rest on: the energy source, the GPUs, the roofline's basis."""
    notes = []
    for label, col in (("energy", "energy_source"), ("GPU", "gpu"), ("roofline", "roofline_basis")):
        seen = sorted({str(v) for v in summary[col].dropna()}) if col in summary else []
        notes += [f"{label}: {v}" for v in seen]
    return notes
