"""Server-side speculation counters from /metrics, under the engine's metric-name prefix
(Engine.metrics_prefix; any prefix for a server of unknown kind).

Scraped right before and right after a measured window (after warm-up); the deltas give
acceptance rate = accepted / draft tokens, mean acceptance length = 1 + accepted / drafts, and
per-position acceptance = accepted_per_pos / drafts.
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.common import probe

COUNTERS = {"spec_decode_num_drafts": "drafts", "spec_decode_num_draft_tokens": "draft_tokens",
            "spec_decode_num_accepted_tokens": "accepted_tokens"}
PER_POS = "spec_decode_num_accepted_tokens_per_pos"


def scrape(base_url: str, headers: dict | None = None, prefix: str | None = None,
           counters: dict[str, str] | None = None, path: str | None = "/metrics") -> dict | None:
    """The speculation counters now, or None if the server has no usable /metrics (at `path`,
    the engine's metrics_path; None: the engine serves none)."""
    if path is None:
        return None
    try:
        text = probe.get(base_url, path, headers).decode("utf-8")
    except (probe.ProbeFailed, UnicodeDecodeError):
        return None
    try:
        return parse(text, prefix, counters)
    except (ValueError, TypeError, IndexError, KeyError):
        return None  # not Prometheus text (some proxies answer every path): no server counters


def parse(text: str, prefix: str | None = None, counters: dict[str, str] | None = None) -> dict:
    """`counters`: the engine's metric names (Engine.metric_counters), else COUNTERS. A server that
    counts generated tokens and verification steps (SGLang) has accepted = generated - steps."""
    counters = counters or COUNTERS
    out: dict = {"drafts": 0.0, "draft_tokens": 0.0, "accepted_tokens": 0.0, "per_pos": {}}
    generated = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if prefix is not None and not sample.name.startswith(prefix):
                continue  # another component's metric of the same name
            name = sample.name.split(":", 1)[-1].removesuffix("_total")
            if name not in counters and name != PER_POS:
                continue  # a gauge of -1 (vLLM's "not measured") is no concern of ours
            if not math.isfinite(sample.value) or sample.value < 0:
                raise ValueError(f"{sample.name} is {sample.value}: not a counter's value")
            if counters.get(name) == "generated_tokens":
                generated += sample.value
            elif name in counters:
                out[counters[name]] += sample.value
            elif name == PER_POS:
                pos = sample.labels.get("position", "?")
                out["per_pos"][pos] = out["per_pos"].get(pos, 0.0) + sample.value
    if "generated_tokens" in counters.values():
        # Fewer tokens than steps contradicts the counters: delta() then refuses the window.
        out["accepted_tokens"] = generated - out["drafts"]
        out["draft_tokens"] = None  # not counted: no acceptance rate, only the acceptance length
    return out


def delta(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    uncounted = before["draft_tokens"] is None or after["draft_tokens"] is None
    d = {k: after[k] - before[k] for k in ("drafts", "accepted_tokens")}
    d["draft_tokens"] = None if uncounted else after["draft_tokens"] - before["draft_tokens"]
    counted = [v for v in d.values() if v is not None]
    if not all(0 <= v < math.inf for v in counted) or (not uncounted and d["accepted_tokens"] > d["draft_tokens"]):
        return None  # counters went back (a restart), overflowed, or contradict each other: no window
    d["per_pos"] = {p: v - before["per_pos"].get(p, 0.0) for p, v in sorted(after["per_pos"].items(), key=_pos)}
    if not all(0 <= v < math.inf for v in d["per_pos"].values()):
        d["per_pos"] = {}
    drafts = d["drafts"]
    d["acceptance_rate"] = d["accepted_tokens"] / d["draft_tokens"] if d["draft_tokens"] else None
    d["mean_acceptance_length"] = 1 + d["accepted_tokens"] / drafts if drafts else None
    d["per_pos_acceptance"] = {p: v / drafts for p, v in d["per_pos"].items()} if drafts else {}
    return d


def _pos(item):
    key = item[0]
    return int(key) if key.isascii() and key.isdecimal() else 1 << 30  # "²" is a digit to isdigit()
