"""summary.csv: one row per cell, concurrency level and prompt set, from the saved records alone."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from engines import ENGINES
from orchestrator.analysis import cost, spread
from orchestrator.analysis.load import crossover
from orchestrator.analysis.metrics import itl_per_token, tpot
from orchestrator.analysis.pairs import GroupKey, PairedSpeedup, pair_table, paired_speedups
from engines.base import ACCEPTED, DRAFTED, HISTOGRAM, STEPS
from orchestrator.types.records import CellRecord, RequestRecord
from orchestrator.analysis.stats import median_ci, outliers, ratio_ci, ratio_of_sums_ci, ratio_text, verdict

METRICS_SOURCE = "metrics"  # /metrics deltas over the cell's measured window, all prompt sets
GROUP = ["engine", "method", "n_spec", "concurrency", "prompt_set"]
COLUMNS = GROUP + [
    "requests_ok", "requests_failed",
    "e2e_tok_s_median", "e2e_tok_s_ci_low", "e2e_tok_s_ci_high", "e2e_tok_s_p10", "e2e_tok_s_p90",
    # the median's relative standard error from server starts and from requests within them (spread.py)
    "e2e_se_starts", "e2e_se_requests", "e2e_interval_covers",
    "decode_tok_s_median", "decode_tok_s_ci_low", "decode_tok_s_ci_high", "decode_tok_s_p10", "decode_tok_s_p90",
    # prompt processing and generation as the server times them (llama.cpp's timings), else prefill
    # from TTFT (marked by prefill_source); analysis/summary.py's _phase_rates
    "prefill_tok_s_median", "prefill_tok_s_ci_low", "prefill_tok_s_ci_high", "prefill_source",
    "server_decode_tok_s_median", "server_decode_tok_s_ci_low", "server_decode_tok_s_ci_high",
    # TTFT and total latency (request start to its last byte), medians with intervals; the mean
    # latency is the figure write-ups quote ("total latency 44.7 -> 23.6 s over five prompts")
    "ttft_s_median", "ttft_s_ci_low", "ttft_s_ci_high",
    "latency_s_median", "latency_s_ci_low", "latency_s_ci_high", "latency_s_mean",
    "tpot_ms_median", "itl_ms_median", "itl_ms_p90", "completion_tokens_median",
    "draft_n", "draft_n_accepted", "acceptance_rate", "acceptance_ci_low", "acceptance_ci_high", "acceptance_source",
    # per request: output tokens per step (both engines) and accepted per drafted step + 1 (vLLM's
    # per-request metrics), each with its interval over requests
    "tokens_per_step", "tokens_per_step_ci_low", "tokens_per_step_ci_high",
    "acceptance_length", "acceptance_length_ci_low", "acceptance_length_ci_high",
    *PairedSpeedup.columns(),  # speedup, its interval and verdict: from request pairs (pairs.py)
    "independent_speedup", "independent_ci_low", "independent_ci_high", "independent_verdict",
    "stops_paying_at", "load_finding",  # the lowest level whose paired interval reaches 1.0, and why (load.py)
    "server_acceptance_rate", "mean_acceptance_length",  # /metrics deltas: all prompt sets of the cell
    *cost.COLUMNS,  # telemetry and the roofline share (cost.py)
    "outliers", "cell_status", "cell_id",
]


def measured_frame(requests: list[RequestRecord]) -> pd.DataFrame:
    """Measured requests only, the newest record per request when a resume re-ran one."""
    df = pd.DataFrame([r.model_dump() for r in requests])
    if df.empty:
        return pd.DataFrame(columns=GROUP + ["cell_id", "key", "ok", "block"])
    df = with_draft_counts(df[df["phase"] == "measured"])
    df = df.assign(block=pd.to_numeric(df["block"], errors="coerce").fillna(0).astype(int)) if "block" in df \
        else df.assign(block=0)
    return df.drop_duplicates(subset=["cell_id", "key"], keep="last")


def summarize(requests: list[RequestRecord], cells: list[CellRecord]) -> pd.DataFrame:
    df = measured_frame(requests)
    rows = [_row(key, g) for key, g in df.groupby(GROUP + ["cell_id"], sort=False)] if len(df) else []
    out = pd.DataFrame(rows, columns=COLUMNS)
    status = cell_status(cells)
    out["cell_status"] = out["cell_id"].map(status).fillna("unknown")
    window = {(c.cell_id, int(conc)): m for c in cells for conc, m in (c.server_metrics or {}).items() if m}
    for col in ("acceptance_rate", "mean_acceptance_length"):
        values = [getattr(window.get((cid, int(conc))), col, None) if pd.notna(conc) else None
                  for cid, conc in zip(out["cell_id"], out["concurrency"], strict=True)]
        out["server_acceptance_rate" if col == "acceptance_rate" else col] = values
    # Engines without per-request draft counts (vLLM) get the server's own rate for the whole cell.
    from_server = out["acceptance_rate"].isna() & out["server_acceptance_rate"].notna()
    out["acceptance_source"] = np.where(out["acceptance_rate"].notna(), "requests",
                                        np.where(from_server, METRICS_SOURCE, None))  # type: ignore[call-overload]  # numpy's stubs take no None, which makes an object array
    out["acceptance_rate"] = out["acceptance_rate"].where(~from_server, out["server_acceptance_rate"])
    out = pd.concat([out, _cells_without_requests(cells, set(out["cell_id"]))], ignore_index=True)
    out = _add_two_level(out, df)
    out = _add_independent(_add_paired(out, df, cells), df)
    out = cost.add_cost(_add_crossover(out), df, cells)
    return out.sort_values(["engine", "concurrency", "prompt_set", "n_spec"], ignore_index=True)[COLUMNS]


def _frames(df: pd.DataFrame, value: str, other: str | None = None) -> dict[GroupKey, pd.DataFrame]:
    """Per (cell, concurrency, prompt set): its ok requests as block, prompt and value columns."""
    ok = df[df["ok"].astype(bool)] if len(df) else df
    cols = [value] + ([other] if other else [])
    out = {}
    for key, g in (ok.groupby(["cell_id", "concurrency", "prompt_set"], sort=False) if len(ok) else []):
        g = g.assign(prompt=g["prompt_id"], **{c: pd.to_numeric(g[c], errors="coerce") for c in cols if c in g})
        if all(c in g for c in cols):
            g = g.dropna(subset=cols)
            if len(g):
                out[key] = g[["block", "prompt", "engine", *cols]]
    return out


def _pool(frames: dict[GroupKey, pd.DataFrame]) -> Callable[[GroupKey], Hashable]:
    """The cells that share a start variance: the same engine, concurrency and prompt set."""
    engine = {k: g["engine"].iloc[0] for k, g in frames.items()}
    return lambda k: (engine[k], k[1], k[2])


def _add_two_level(out: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """The e2e median's and the acceptance's intervals over both levels (spread.py), the start
    variance pooled per engine, concurrency and prompt set."""
    out = out.astype({"e2e_interval_covers": object})
    frames = _frames(df, "e2e_tok_s")
    found = spread.intervals(frames, spread.nanmedian, ["e2e_tok_s"], _pool(frames))
    counted = df.assign(_drafted=per_request(df, DRAFTED), _accepted=per_request(df, ACCEPTED)) if len(df) else df
    drafts = {k: g for k, g in _frames(counted, "_drafted", "_accepted").items() if g["_drafted"].sum() > 0}
    accepted = spread.intervals(drafts, spread.ratio_of_sums, ["_accepted", "_drafted"], _pool(drafts))
    for i, r in out.iterrows():
        key = (r["cell_id"], r["concurrency"], r["prompt_set"])
        iv = found.get(key)
        if iv is not None and iv.estimate is not None:
            out.loc[i, ["e2e_tok_s_ci_low", "e2e_tok_s_ci_high", "e2e_se_starts", "e2e_se_requests",
                        "e2e_interval_covers"]] = [iv.low, iv.high, iv.se_starts, iv.se_requests, iv.covers]
        a = accepted.get(key)
        if a is not None and a.low is not None:
            out.loc[i, ["acceptance_ci_low", "acceptance_ci_high"]] = [a.low, a.high]
    return out


def cell_status(cells: list[CellRecord]) -> dict[str, str]:
    """Per cell, over its blocks' starts: ok when every start was, else the first start's status
    that was not (a depth with a failed start is not clean)."""
    out: dict[str, str] = {}
    for c in cells:
        if out.get(c.cell_id, "ok") == "ok":
            out[c.cell_id] = c.status
    return out


def _add_crossover(out: pd.DataFrame) -> pd.DataFrame:
    found = crossover(out).set_index(["cell_id", "prompt_set"])
    keys = list(zip(out["cell_id"], out["prompt_set"], strict=True))
    out["stops_paying_at"] = [found["stops_paying_at"].get(k) if k in found.index else None for k in keys]
    out["load_finding"] = [found["finding"].get(k) if k in found.index else None for k in keys]
    return out.astype({"stops_paying_at": "Int64"})


def _row(key: tuple[Hashable, ...], g: pd.DataFrame) -> dict[str, Any]:
    ok = g[g["ok"]]
    row = dict(zip(GROUP + ["cell_id"], key, strict=True))
    row["requests_ok"], row["requests_failed"] = len(ok), len(g) - len(ok)
    for rate in ("e2e_tok_s", "decode_tok_s"):
        vals = pd.to_numeric(ok[rate], errors="coerce").dropna()
        row[f"{rate}_median"] = vals.median() if len(vals) else None
        row[f"{rate}_ci_low"], row[f"{rate}_ci_high"] = median_ci(vals)
        row[f"{rate}_p10"] = vals.quantile(0.1) if len(vals) else None
        row[f"{rate}_p90"] = vals.quantile(0.9) if len(vals) else None
    row.update(_times(ok))
    row.update(_phase_rates(ok))
    row.update(_latency(ok))
    row["completion_tokens_median"] = pd.to_numeric(ok["completion_tokens"], errors="coerce").median() if len(ok) else None
    row["outliers"] = _outliers(ok)
    row.update(_acceptance(ok))
    return row


def _times(ok: pd.DataFrame) -> dict[str, Any]:
    ttft = per_request(ok, "ttft_s").dropna()
    total = (per_request(ok, "t_end") - per_request(ok, "t_start")).dropna()
    out = {"latency_s_mean": total.mean() if len(total) else None}
    for stem, values in (("ttft_s", ttft), ("latency_s", total)):
        out[f"{stem}_median"] = values.median() if len(values) else None
        out[f"{stem}_ci_low"], out[f"{stem}_ci_high"] = median_ci(values)
    return out


PREFILL_TIMED, PREFILL_FROM_TTFT = "timings", "ttft"


def _phase_rates(ok: pd.DataFrame) -> dict[str, Any]:
    """Prefill and decode tok/s per request, medians with intervals. Prefill: the server's own
    prompt_per_second where it reports one (llama.cpp), else prompt tokens / TTFT, which also
    holds the network, queueing and the first decode step (prefill_source says which). Decode:
    the server's predicted_per_second; the stream's decode_tok_s is its own column."""
    timed = per_request(ok, "timings_prompt_per_second")
    tokens, ttft = per_request(ok, "prompt_tokens"), per_request(ok, "ttft_s")
    derived = (tokens / ttft).where((tokens > 0) & (ttft > 0))
    prefill = timed.fillna(derived)
    out: dict[str, Any] = {}
    if prefill.notna().any():
        out["prefill_source"] = PREFILL_TIMED if timed.notna().all() else (
            PREFILL_FROM_TTFT if timed.isna().all() else f"{PREFILL_TIMED}+{PREFILL_FROM_TTFT}")
    for stem, values in (("prefill_tok_s", prefill), ("server_decode_tok_s", per_request(ok, "timings_predicted_per_second"))):
        values = values.dropna()
        out[f"{stem}_median"] = values.median() if len(values) else None
        out[f"{stem}_ci_low"], out[f"{stem}_ci_high"] = median_ci(values)
    return out


def _latency(ok: pd.DataFrame) -> dict[str, Any]:
    recs = ok.to_dict("records")
    tpots = [t for t in map(tpot, recs) if t is not None]
    itls = [v for r in recs for v in (itl_per_token(r) or [])]
    return {"tpot_ms_median": 1000 * float(np.median(tpots)) if tpots else None,
            "itl_ms_median": 1000 * float(np.median(itls)) if itls else None,
            "itl_ms_p90": 1000 * float(np.percentile(itls, 90)) if itls else None}


def _outliers(ok: pd.DataFrame) -> str:
    """Requests far from the rest of their cell: flagged, never dropped."""
    vals = pd.to_numeric(ok["e2e_tok_s"], errors="coerce")
    flags = outliers(vals.fillna(vals.median()))
    return "; ".join(f"{k} ({v:.1f} tok/s)" for k, v, f in zip(ok["key"], vals, flags, strict=True) if f)


def with_draft_counts(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the neutral draft columns (engines/base.py), each filled from the record fields
    the engines' adapters name (an engine reports under one of them)."""
    adapters = list(dict.fromkeys(e.stream_counts.draft_fields() for e in ENGINES.values() if e.stream_counts))
    columns = {}
    for column in (DRAFTED, ACCEPTED, STEPS):
        columns[column] = per_request(df, [n for a in adapters if (n := a.source(column))])
    histogram = pd.Series(None, index=df.index, dtype=object)
    for name in dict.fromkeys(n for a in adapters if (n := a.source(HISTOGRAM))):
        if name in df:
            histogram = histogram.where(histogram.notna(), df[name])
    return df.assign(**columns, **{HISTOGRAM: histogram})


def per_request(ok: pd.DataFrame, names: str | Iterable[str]) -> pd.Series:
    """Per request, the first of `names` it has (an engine reports under one of them)."""
    out = pd.Series(np.nan, index=ok.index, dtype=float)
    for name in (names,) if isinstance(names, str) else names:
        if name in ok:
            out = out.fillna(pd.to_numeric(ok[name], errors="coerce"))
    return out


def _acceptance(ok: pd.DataFrame) -> dict[str, Any]:
    drafted, accepted = per_request(ok, DRAFTED), per_request(ok, ACCEPTED)
    known = drafted.notna() & accepted.notna()
    if not known.any():
        return {"draft_n": 0, "draft_n_accepted": 0, "acceptance_rate": None}
    drafted, accepted = drafted[known], accepted[known]
    low, high = ratio_of_sums_ci(accepted, drafted)
    out = {"draft_n": int(drafted.sum()), "draft_n_accepted": int(accepted.sum()),
           "acceptance_rate": accepted.sum() / drafted.sum() if drafted.sum() else None,
           "acceptance_ci_low": low, "acceptance_ci_high": high}
    tokens = pd.to_numeric(ok.loc[known.index[known], "completion_tokens"], errors="coerce").fillna(0)
    drafts = per_request(ok, STEPS)[known]
    # Tokens generated: a last step may accept drafts past max_tokens, which the server drops
    # (model.generated); where the requests report their drafted steps, count what was generated.
    tokens = np.maximum(tokens, (drafts + accepted).fillna(0))
    steps = tokens - accepted  # each step yields one token of its own and the drafts it accepted
    if steps.sum() > 0 and (steps >= 0).all():
        low, high = ratio_of_sums_ci(tokens, steps)
        out.update(tokens_per_step=tokens.sum() / steps.sum(), tokens_per_step_ci_low=low, tokens_per_step_ci_high=high)
    if drafts.notna().all() and drafts.sum() > 0:
        low, high = ratio_of_sums_ci(accepted, drafts)
        out.update(acceptance_length=1 + accepted.sum() / drafts.sum(),
                   acceptance_length_ci_low=None if low is None else 1 + low,
                   acceptance_length_ci_high=None if high is None else 1 + high)
    return out


def _cells_without_requests(cells: list[CellRecord], seen: set[str]) -> pd.DataFrame:
    rows = [{"engine": c.engine, "method": c.method, "n_spec": c.n_spec,
             "concurrency": None, "prompt_set": None, "requests_ok": 0, "requests_failed": 0,
             "cell_status": c.status, "cell_id": c.cell_id}
            for c in cells if c.cell_id not in seen]
    return pd.DataFrame(rows, columns=COLUMNS)


def _add_paired(out: pd.DataFrame, df: pd.DataFrame, cells: list[CellRecord]) -> pd.DataFrame:
    """Each speculative row's speedups from its request pairs; an n_spec 0 row with a successful
    request is the baseline (1.0, unless its median is 0 tok/s: then it is no unit)."""
    pairs = pair_table(df, cells)
    found = paired_speedups(pairs)
    rows = []
    for r in out.itertuples(index=False):
        median = pd.to_numeric(r.e2e_tok_s_median, errors="coerce")
        if r.n_spec == 0 and r.requests_ok:
            one = 1.0 if median > 0 else None
            rows.append(PairedSpeedup(speedup=one, speedup_verdict="baseline", throughput_speedup=one))
        else:
            rows.append(found.get((r.cell_id, r.concurrency, r.prompt_set), PairedSpeedup()))
    paired = pd.DataFrame([vars(p) for p in rows], columns=PairedSpeedup.columns(), index=out.index)
    return out.drop(columns=PairedSpeedup.columns()).join(paired.astype(object))


def _add_independent(out: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Median e2e over the same engine's n_spec 0 median, with both cells' requests resampled
    independently, as if they did not pair: kept beside the paired figures to show what pairing
    changes. A baseline whose median is 0 gives no ratio, no interval and no verdict."""
    out = out.astype({c: object for c in ("independent_speedup", "independent_verdict")})
    ok = df[df["ok"]] if len(df) else df
    rates = {k: pd.to_numeric(g["e2e_tok_s"], errors="coerce").dropna().to_numpy()
             for k, g in ok.groupby(["engine", "n_spec", "concurrency", "prompt_set"])} if len(ok) else {}
    for i, r in out.iterrows():
        mine = rates.get((r["engine"], r["n_spec"], r["concurrency"], r["prompt_set"]))
        base = rates.get((r["engine"], 0, r["concurrency"], r["prompt_set"]))
        if r["n_spec"] == 0 or mine is None or base is None or not len(mine) or not len(base) or np.median(base) <= 0:
            continue
        low, high = ratio_ci(mine, base)
        out.loc[i, ["independent_speedup", "independent_ci_low", "independent_ci_high", "independent_verdict"]] = [
            float(np.median(mine) / np.median(base)), low, high, verdict(low, high)]
    return out


def format_table(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "no cell and no measured request in the records: nothing to summarize"
    summary = summary.copy()
    summary["speedup_ci"] = [_ci_text(lo, hi) for lo, hi in zip(summary["speedup_ci_low"], summary["speedup_ci_high"], strict=True)]
    cols = ["engine", "method", "n_spec", "concurrency", "prompt_set", "requests_ok", "requests_failed",
            "e2e_tok_s_median", "decode_tok_s_median", "prefill_tok_s_median", "ttft_s_median", "latency_s_median",
            "acceptance_rate", "speedup", "speedup_ci", "speedup_verdict"]
    view = summary[cols].rename(columns={
        "concurrency": "conc", "prompt_set": "prompts", "requests_ok": "ok", "requests_failed": "failed",
        "e2e_tok_s_median": "e2e_tok/s", "decode_tok_s_median": "decode_tok/s", "prefill_tok_s_median": "prefill_tok/s",
        "ttft_s_median": "ttft_s", "latency_s_median": "latency_s", "acceptance_rate": "accept", "speedup": "speedup",
        "speedup_ci": "95% CI", "speedup_verdict": "verdict"})
    view.loc[view["n_spec"] == 0, "method"] = "none"
    fmt = {"e2e_tok/s": "{:.1f}", "decode_tok/s": "{:.1f}", "prefill_tok/s": "{:.0f}", "ttft_s": "{:.3f}",
           "latency_s": "{:.2f}", "accept": "{:.2f}", "speedup": "{:.2f}x"}
    for col, f in fmt.items():
        view[col] = view[col].map(lambda v, f=f: "-" if v is None or pd.isna(v) else f.format(v))
    server = summary["acceptance_source"] == METRICS_SOURCE
    view.loc[server.to_numpy(), "accept"] = view.loc[server.to_numpy(), "accept"] + "*"
    derived = (summary["prefill_source"].astype(object).fillna(PREFILL_TIMED) != PREFILL_TIMED).to_numpy()
    view.loc[derived, "prefill_tok/s"] = view.loc[derived, "prefill_tok/s"] + "†"
    view = view.astype(object).where(view.notna(), "-")
    note = ("\n* accept from the server's /metrics over the whole measured window (all prompt sets): "
            "this engine reports no per-request draft counts") if server.any() else ""
    note += ("\n† prefill tok/s from prompt tokens / TTFT (network, queueing and the first decode step "
             "included): the server reports no prompt timing") if derived.any() else ""
    covers = sorted({c for c in summary["interval_covers"].dropna()})
    note += ("\nspeedup: median of the speculative/n_spec 0 ratios of request pairs (same block, prompt, "
             "repeat and concurrency); 95% CI with prompts as the unit, covering " + " / ".join(covers)
             ) if summary["requests_paired"].fillna(0).gt(0).any() else ""
    table: str = view.to_string(index=False)
    return table + note + unpaired_note(summary)


def unpaired_note(summary: pd.DataFrame) -> str:
    """One line when some speculative request had no usable twin: counted, never dropped silently."""
    n = int(pd.to_numeric(summary["requests_unpaired"], errors="coerce").fillna(0).sum())
    if not n:
        return ""
    cells = summary.loc[pd.to_numeric(summary["requests_unpaired"], errors="coerce").fillna(0) > 0, "cell_id"].nunique()
    requests, were = ("1 speculative request", "has") if n == 1 else (f"{n} speculative requests", "have")
    return (f"\nunpaired: {requests} in {cells} cell{'s' if cells != 1 else ''} {were} no usable twin at n_spec 0 "
            "(a failed request on either side, or none sent) and no part in any speedup; pairs.csv says why "
            "for each")


SPEEDUP_COLUMNS = ["engine", "method", "n_spec", "conc", "prompts", "pairs", "unpaired", "typical [95% CI]",
                   "verdict", "throughput [95% CI]", "pair ratios min-max", "slower", "independent [95% CI]",
                   "independent verdict"]


def speedup_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Each speculative row with pairs or a baseline: its paired speedups, their spread, and the
    independent interval beside them (what the speedup was before pairing)."""
    spec = summary[(summary["n_spec"] > 0) & (summary["requests_paired"].fillna(0).astype(int)
                                              + summary["requests_unpaired"].fillna(0).astype(int) > 0)]
    rows = [[r["engine"], r["method"], r["n_spec"], r["concurrency"], r["prompt_set"], r["requests_paired"],
             r["requests_unpaired"], _with_ci(r, "speedup", "speedup"), r["speedup_verdict"] or "-",
             _with_ci(r, "throughput_speedup", "throughput"), _spread(r), r["pairs_slower"],
             _with_ci(r, "independent_speedup", "independent"), r["independent_verdict"] or "-"]
            for _, r in spec.iterrows()]
    return pd.DataFrame(rows, columns=SPEEDUP_COLUMNS).astype(object).where(lambda d: d.notna(), "-")


def _with_ci(r: pd.Series, value: str, stem: str) -> str:
    return ratio_text(r[value], r[f"{stem}_ci_low"], r[f"{stem}_ci_high"])


def format_speedups(summary: pd.DataFrame) -> str:
    """The pairs table the CLI prints after the summary, with a line saying what each figure is."""
    view = speedup_frame(summary)
    if view.empty:
        return ""
    table: str = view.to_string(index=False)
    return ("speedup from request pairs (speculative / n_spec 0, same prompt, repeat and concurrency):\n"
            + table
            + "\ntypical: median of the pair ratios; throughput: total tokens / total seconds over the "
              "same pairs; independent: ratio of the cells' medians, requests resampled as if unpaired")


def _spread(r: pd.Series) -> str:
    if r["pair_ratio_min"] is None or pd.isna(r["pair_ratio_min"]):
        return "-"
    return f"{r['pair_ratio_min']:.2f}-{r['pair_ratio_max']:.2f}"


def _ci_text(low: Any, high: Any) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return "-"
    return f"{low:.2f}-{high:.2f}"
