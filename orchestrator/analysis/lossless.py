"""Lossless check: at temperature 0 speculation should not change the text.

Each speculative output is checked against the same engine's n_spec 0 output for the same
prompt, repeat and concurrency. Divergence is reported, never hidden: numerical noise in
batched verification can cause it.
"""

from __future__ import annotations

import itertools

import pandas as pd

from orchestrator.analysis.pairs import TWIN, Row, baseline_index, nearest
from orchestrator.analysis.summary import measured_frame
from orchestrator.types.records import RequestRecord

SNIPPET = 24


def check_texts(requests: list[RequestRecord]) -> pd.DataFrame:
    """One row per speculative measured request that has a baseline to check against."""
    df = measured_frame(requests)
    if df.empty:
        return pd.DataFrame()
    texts = df["text"] if "text" in df else pd.Series(None, index=df.index, dtype=object)
    df = df[df["ok"].astype(bool) & texts.map(lambda t: isinstance(t, str))]  # no text: nothing to check
    base = baseline_index(df)
    rows = []
    for rec in df[df["n_spec"] > 0].to_dict("records"):
        ref = nearest(rec, base.get(tuple(rec[k] for k in TWIN), []))
        if ref is not None:
            rows.append(_one(rec, ref))
    out = pd.DataFrame(rows)
    if len(out):
        out = out.astype({"first_diff_char": "Int64", "first_diff_token": "Int64"})
    return out


def per_cell(checks: pd.DataFrame) -> pd.DataFrame:
    if checks.empty:
        return pd.DataFrame(columns=["cell_id", "engine", "n_spec", "checked", "identical", "share_identical"])
    g = checks.groupby(["cell_id", "engine", "n_spec"], sort=False)["identical"]
    out = g.agg(checked="size", identical="sum").reset_index()
    out["share_identical"] = out["identical"] / out["checked"]
    return out.sort_values(["engine", "n_spec"], ignore_index=True)


def _one(rec: Row, ref: Row) -> Row:
    a, b = ref["text"], rec["text"]
    idx = _first_difference(a, b)
    row = {"cell_id": rec["cell_id"], "engine": rec["engine"], "n_spec": rec["n_spec"],
           "prompt": f"{rec['prompt_set']}/{rec['prompt_id']}", "repeat": rec["repeat"],
           "concurrency": rec["concurrency"], "identical": idx is None,
           "first_diff_char": idx, "first_diff_token": None, "baseline_snippet": "", "speculative_snippet": ""}
    if idx is not None:
        lo = max(0, idx - SNIPPET)
        row.update(first_diff_token=_token_at(rec, idx),
                   baseline_snippet=a[lo: idx + SNIPPET], speculative_snippet=b[lo: idx + SNIPPET])
    return row


def _first_difference(a: str, b: str) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _token_at(rec: Row, char_idx: int) -> int | None:
    """Token position of a character: from the server's per-chunk token counts, or the chunk
    index when every chunk carried one token. None when neither is known."""
    chars = rec.get("chunk_chars") or []
    if not chars:
        return None
    ends = list(itertools.accumulate(chars))
    chunk = next((i for i, end in enumerate(ends) if end > char_idx), len(ends))
    cum = rec.get("chunk_tokens") or []
    if cum and len(cum) == len(chars) and all(c is not None for c in cum):
        return cum[chunk - 1] if chunk > 0 else 0
    if rec.get("chunks") == rec.get("completion_tokens"):
        return chunk
    return None
