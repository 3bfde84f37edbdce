"""A request's draft counts in engine-neutral terms, as analysis reads them.

Each engine's stream reports drafts under its own names (llama.cpp's `timings.draft_n`, vLLM's
`metrics.speculative_decoding.num_draft_tokens`); the records keep the server's own fields, as
sent. The engine's adapter (`engines.base.StreamCounts.draft_fields`) says which record field
holds each neutral count, and analysis/summary.py fills these columns from it once per run, so
that no figure names an engine's field and a new engine changes nothing outside its module."""

from __future__ import annotations

from dataclasses import dataclass

# The neutral columns of a run's request frame.
DRAFTED = "drafted"  # draft tokens proposed
ACCEPTED = "accepted"  # of those, accepted (never more)
STEPS = "draft_steps"  # verification steps that had a draft
HISTOGRAM = "accepted_histogram"  # steps by drafts accepted: [j] steps accepted exactly j


@dataclass(frozen=True)
class DraftFields:
    """Where one engine's request records hold each neutral count; None: it reports none."""

    drafted: str | None = None
    accepted: str | None = None
    steps: str | None = None
    histogram: str | None = None

    def source(self, column: str) -> str | None:
        """The record field behind a neutral column."""
        return {DRAFTED: self.drafted, ACCEPTED: self.accepted, STEPS: self.steps, HISTOGRAM: self.histogram}[column]
