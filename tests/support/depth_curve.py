"""A known speedup curve and the records a depth would give under it (with seeded noise): the
truth the depth search's tests (test_search, test_search_cli) measure against."""

from __future__ import annotations

import random
from dataclasses import dataclass

GRID = [0, 2, 4, 8, 12, 16, 24, 32, 48, 64]
TOKENS = 256
PROMPTS = [f"p{i}" for i in range(8)]
FACTOR = {p: 0.85 + 0.04 * i for i, p in enumerate(PROMPTS)}  # each prompt's own pace, the same at every depth; each request
# then varies by up to 3% (seeded: the same records on every run)


@dataclass(frozen=True)
class Curve:
    """A known truth: a plain step costs `plain` seconds, a step at depth k `base + per_token k`;
    a `share` of the steps draft, and position i is accepted in p^(i+1) of the drafts."""

    plain: float
    base: float
    per_token: float
    share: float
    p: float

    def shares(self, k: int) -> list[float]:
        return [self.p ** (i + 1) for i in range(k)]

    def tok_s(self, k: int) -> float:
        if k == 0:
            return 1 / self.plain
        return (1 + self.share * sum(self.shares(k))) / (self.base + self.per_token * k)


TRUTH = Curve(plain=0.02, base=0.02, per_token=0.0008, share=0.5, p=0.9)


def cell(k: int, status: str = "ok", engine: str = "e", curve: Curve = TRUTH) -> tuple[list[dict], dict]:
    """Requests and the cell record of depth k, measured as the true curve says (with noise)."""
    rows = []
    for r in range(2):
        for p in PROMPTS:
            rate = curve.tok_s(k) * FACTOR[p] * random.Random(f"{k}/{p}/{r}").uniform(0.97, 1.03)
            rows.append({"cell_id": f"{engine}-n{k}", "engine": engine, "method": "ngram" if k else "none", "n_spec": k,
                         "concurrency": 1, "prompt_set": "s", "phase": "measured", "ok": True,
                         "key": f"measured/c1/r{r}/s/{p}", "prompt_id": p, "repeat": r, "e2e_tok_s": rate,
                         "completion_tokens": TOKENS, "t_start": 0.0, "t_end": TOKENS / rate})
    rec = {"cell_id": f"{engine}-n{k}", "engine": engine, "method": "ngram" if k else "none", "n_spec": k, "status": status}
    if k:
        out = TOKENS * len(rows)
        shares = curve.shares(k)
        steps = out / (1 + curve.share * sum(shares))  # out = steps + accepted; drafts = share * steps
        drafts = curve.share * steps
        rec["server_metrics"] = {"1": {"drafts": drafts, "draft_tokens": drafts * k,
                                       "accepted_tokens": drafts * sum(shares),
                                       "per_pos": {str(i): drafts * s for i, s in enumerate(shares)}}}
    return rows, rec
