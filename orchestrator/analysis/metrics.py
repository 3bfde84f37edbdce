"""Per-request latency metrics derived from a saved record (see docs/metrics.md)."""

from __future__ import annotations

from typing import Any

MAX_TOKENS = 1 << 20


def itl_per_token(rec: dict[str, Any]) -> list[float] | None:
    """Inter-token latency in seconds, one value per token after the first chunk.

    A chunk that carries k tokens contributes k values of gap/k: its gap spread over its
    tokens, never counted as one token. Needs the server's per-chunk token counts; None
    without them (then only TPOT is known).
    """
    times, cum = rec.get("chunk_t") or [], rec.get("chunk_tokens") or []
    if len(times) < 2 or len(cum) != len(times) or any(c is None for c in cum):
        return None
    if cum[-1] - cum[0] > MAX_TOKENS:  # a hand-edited record must not make a list of billions
        return None
    out: list[float] = []
    for i in range(1, len(times)):
        k = cum[i] - cum[i - 1]
        if k > 0:
            out += [(times[i] - times[i - 1]) / k] * k
    return out


def tpot(rec: dict[str, Any]) -> float | None:
    """Time per output token after the first: (end - first_token) / (tokens - 1)."""
    n, first, end = rec.get("completion_tokens"), rec.get("t_first_token"), rec.get("t_end")
    if not n or n < 2 or first is None or end is None:
        return None
    seconds: float = (end - first) / (n - 1)  # a record's fields: JSON numbers
    return seconds
