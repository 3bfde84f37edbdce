"""Intervals over both levels of a blocked sweep: server starts (blocks) and requests within them.

A cell measured in B blocks has B server starts. Its requests are laid out as an array
[block, prompt, repeat]. Two sources of spread are estimated apart and added on the log scale:

- requests: the statistic's variance when prompts are resampled (the same draw in every block,
  since every block sends the same prompts) and repeats are resampled within each prompt and
  block, blocks held fixed: a bootstrap, scaled by P/(P-1) because a bootstrap over P prompts
  understates their spread by that factor;
- starts: how far each block's own estimate moves from block to block beyond what its requests'
  noise explains. One cell's B blocks give B-1 degrees of freedom, too few to stand alone, so
  the start variance is pooled over every cell of the same engine, concurrency and prompt set
  (a property of the host and the engine's start-up, not of the depth), the way a random-effects
  model with a common variance pools it.
- unsteady cells: a shared host is sometimes busy for a few seconds, and the start it lands on
  runs at half speed. One such start among twenty would widen every cell's interval through the
  pool, so before pooling, Cochran's test (the largest variance against the sum, at 1%, repeated
  while three cells remain) sets apart the cells whose starts disagree beyond the others'. Those
  keep their own start variance and its own degrees of freedom (B-1): a wide interval for the
  cell that earned it, and the interval says so (UNSTEADY).

The interval is exp(log estimate +- t * sqrt(V_requests + V_starts / B)), t from Student's
distribution with Satterthwaite's degrees of freedom (prompts - 1 for the request part, the pooled
count for the start part). With one block there is no start part and the interval says it covers
requests only. A floor of RESOLUTION on the standard error keeps identical ratios (a zero-width
bootstrap) from calling 1.001x "faster". Worked example: docs/metrics.md, "Two levels".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from orchestrator.analysis import stats
from orchestrator.analysis.stats import RESAMPLES, SEED, FloatArray, Statistic

CONFIDENCE = 0.95
RESOLUTION = 0.005  # smallest standard error on the log scale: 0.5%, below what a shared host resolves
BOTH = "starts and requests"
REQUESTS_ONLY = "requests only (one block: run-to-run spread not measured)"
UNSTEADY = "its own starts (they disagree beyond the other cells': Cochran's test) and requests"
UNSTEADY_ALPHA = 0.01

Key = TypeVar("Key", bound=Hashable)  # a group's key: (cell, concurrency, prompt set), or a depth


def nanmedian(x: FloatArray) -> FloatArray:
    with np.errstate(all="ignore"):
        return np.nanmedian(x, axis=-1)


def ratio_of_sums(num: FloatArray, den: FloatArray) -> FloatArray:
    with np.errstate(all="ignore"):
        ratio: FloatArray = np.nansum(num, axis=-1) / np.nansum(den, axis=-1)  # numpy types it Any
        return ratio


def throughput(spec_tokens: FloatArray, spec_s: FloatArray, base_tokens: FloatArray, base_s: FloatArray) -> FloatArray:
    """Tokens over seconds of the speculative side, over the same of the baseline."""
    return ratio_of_sums(spec_tokens, spec_s) / ratio_of_sums(base_tokens, base_s)


@dataclass
class Layout:
    """Value columns as [block, prompt, repeat] arrays, NaN where a request is missing."""

    values: list[FloatArray]
    counts: NDArray[np.int_]  # [block, prompt]: requests present (they fill the first slots)

    @property
    def blocks(self) -> int:
        return int(self.counts.shape[0])

    @property
    def prompts(self) -> int:
        return int(self.counts.shape[1])


def layout(frame: pd.DataFrame, columns: list[str]) -> Layout:
    """`frame` has columns block, prompt (any hashable naming the prompt) and the value columns;
    each row one request (or pair)."""
    blocks = {b: i for i, b in enumerate(sorted(frame["block"].unique()))}
    prompts = {p: i for i, p in enumerate(sorted(frame["prompt"].unique(), key=str))}
    bi = frame["block"].map(blocks).to_numpy()
    pi = frame["prompt"].map(prompts).to_numpy()
    counts = np.zeros((len(blocks), len(prompts)), dtype=int)
    slot = np.empty(len(frame), dtype=int)
    for n, (b, p) in enumerate(zip(bi, pi, strict=True)):
        slot[n] = counts[b, p]
        counts[b, p] += 1
    width = max(1, int(counts.max(initial=0)))
    values = []
    for col in columns:
        arr = np.full((len(blocks), len(prompts), width), np.nan)
        arr[bi, pi, slot] = frame[col].to_numpy(dtype=float)
        values.append(arr)
    return Layout(values, counts)


@dataclass
class Spread:
    """One group's estimate and the parts of its spread (all on the log scale)."""

    estimate: float | None
    var_requests: float  # prompts and repeats resampled, blocks fixed
    prompts: int
    block_logs: list[float]  # each block's own estimate
    block_noise: float  # mean over blocks of one block's repeat-resampling variance

    @property
    def blocks(self) -> int:
        return len(self.block_logs)


def spread_of(frame: pd.DataFrame, statistic: Statistic, columns: list[str]) -> Spread:
    lay = layout(frame, columns)
    est = _log(statistic(*(v.reshape(-1) for v in lay.values)))
    if est is None:
        return Spread(None, 0.0, lay.prompts, [], 0.0)
    rng = np.random.default_rng(SEED)
    draws = _log_all(statistic(*_requests(lay, rng, prompts_too=True)))
    var = float(np.var(draws)) * _small(lay.prompts) if draws is not None else math.inf
    logs: list[float] = []
    noise: list[float] = []
    for b in range(lay.blocks):
        one = Layout([v[b:b + 1] for v in lay.values], lay.counts[b:b + 1])
        value = _log(statistic(*(v.reshape(-1) for v in one.values)))
        if value is None:
            continue
        logs.append(value)
        d = _log_all(statistic(*_requests(one, rng, prompts_too=False)))
        noise.append(float(np.var(d)) if d is not None else 0.0)
    return Spread(est, var, lay.prompts, logs, float(np.mean(noise)) if noise else 0.0)


def _small(n: int) -> float:
    """A bootstrap over n units understates their variance by (n-1)/n."""
    return n / (n - 1) if n > 1 else math.inf


def _requests(lay: Layout, rng: np.random.Generator, prompts_too: bool) -> list[FloatArray]:
    """RESAMPLES resamples of every value column, flattened to [resample, request]."""
    b_n, p_n, width = lay.values[0].shape
    pick = rng.integers(0, p_n, size=(RESAMPLES, p_n)) if prompts_too else np.broadcast_to(np.arange(p_n), (RESAMPLES, p_n))
    n = lay.counts[:, pick]  # [block, resample, prompt]
    n = np.moveaxis(n, 0, 1)  # [resample, block, prompt]
    u = rng.random(size=(RESAMPLES, b_n, p_n, width))
    slot = np.minimum((u * n[..., None]).astype(int), width - 1)
    blocks = np.arange(b_n)[None, :, None, None]
    prompts = pick[:, None, :, None]
    out = []
    for v in lay.values:
        got = v[blocks, prompts, slot]
        got = np.where((n > 0)[..., None], got, np.nan)
        out.append(got.reshape(RESAMPLES, -1))
    return out


def _log(value: ArrayLike) -> float | None:
    v = float(np.asarray(value))
    return math.log(v) if math.isfinite(v) and v > 0 else None


def _log_all(values: ArrayLike) -> FloatArray | None:
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0)
    if ok.mean() < 0.9:  # a statistic undefined in many resamples (a zero median): no spread to speak of
        return None
    return np.log(v[ok])


@dataclass(frozen=True)
class StartVariance:
    """The start-to-start variance of one estimate on the log scale, pooled over cells."""

    variance: float
    df: int

    @classmethod
    def pooled(cls, spreads: list[Spread]) -> "StartVariance":
        num, df = 0.0, 0
        for s in spreads:
            if s.blocks >= 2:
                excess = float(np.var(s.block_logs, ddof=1)) - s.block_noise
                num += (s.blocks - 1) * excess
                df += s.blocks - 1
        return cls(max(num / df, 0.0) if df else 0.0, df)

    def widened(self, s: Spread) -> "StartVariance":
        """The start variance of a cell set apart as unsteady: its own, at its own degrees of
        freedom, where that is larger than the pool's."""
        own = float(np.var(s.block_logs, ddof=1)) - s.block_noise
        return StartVariance(max(own, self.variance), s.blocks - 1) if own > self.variance else self


def unsteady(spreads: dict[Key, Spread], alpha: float = UNSTEADY_ALPHA) -> set[Key]:
    """The keys whose block-to-block variance Cochran's test sets apart from the rest: the
    largest variance over their sum, against its critical value for k cells of nu degrees of
    freedom, the largest removed and the test repeated while at least three cells remain."""
    left = {k: float(np.var(s.block_logs, ddof=1)) for k, s in spreads.items() if s.blocks >= 2}
    nu = min((spreads[k].blocks - 1 for k in left), default=0)
    out: set[Key] = set()
    while len(left) >= 3:
        worst = max(left, key=lambda key: left[key])
        total = sum(left.values())
        k = len(left)
        f = float(sps.f.ppf(1 - alpha / k, nu, nu * (k - 1)))
        if total <= 0 or left[worst] / total <= 1 / (1 + (k - 1) / f):
            break
        out.add(worst)
        del left[worst]
    return out


@dataclass(frozen=True)
class Interval:
    estimate: float | None
    low: float | None
    high: float | None
    covers: str  # BOTH or REQUESTS_ONLY
    se_starts: float | None  # relative standard errors of the estimate from each level
    se_requests: float | None


NONE = Interval(None, None, None, REQUESTS_ONLY, None, None)


def interval(s: Spread, start: StartVariance, confidence: float = CONFIDENCE, steady: bool = True) -> Interval:
    """The two-level interval of one group (see the module's docstring); `steady` False for a cell
    set apart by Cochran's test, whose `start` is its own (StartVariance.widened)."""
    if s.estimate is None:
        return NONE
    covers = (UNSTEADY if steady is False else BOTH) if s.blocks >= 2 and start.df > 0 else REQUESTS_ONLY
    if s.prompts < 2 or not math.isfinite(s.var_requests):
        return Interval(math.exp(s.estimate), None, None, covers, None, None)
    v_req = max(s.var_requests, RESOLUTION ** 2)
    v_start = start.variance / s.blocks if covers != REQUESTS_ONLY else 0.0
    total = v_req + v_start
    parts = v_req ** 2 / (s.prompts - 1) + (v_start ** 2 / start.df if v_start else 0.0)
    df = total ** 2 / parts
    half = float(sps.t.ppf(1 - (1 - confidence) / 2, df)) * math.sqrt(total)
    return Interval(math.exp(s.estimate), math.exp(s.estimate - half), math.exp(s.estimate + half), covers,
                    math.sqrt(v_start), math.sqrt(v_req))


def intervals(groups: dict[Key, pd.DataFrame], statistic: Statistic, columns: list[str], pool_by: Callable[[Key], Hashable],
              confidence: float = CONFIDENCE) -> dict[Key, Interval]:
    """{group key: Interval}; `groups` maps a key to its frame (block, prompt and `columns`), and
    `pool_by(key)` names the cells that share a start variance (engine, concurrency, prompt set);
    within each pool the unsteady cells keep their own."""
    spreads = {k: spread_of(g, statistic, columns) for k, g in groups.items()}
    pools: dict[Hashable, dict[Key, Spread]] = {}
    for k, s in spreads.items():
        pools.setdefault(pool_by(k), {})[k] = s
    out = {}
    for members in pools.values():
        apart = unsteady(members)
        start = StartVariance.pooled([s for k, s in members.items() if k not in apart])
        for k, s in members.items():
            out[k] = interval(s, start.widened(s), confidence, False) if k in apart else interval(s, start, confidence)
    return out


def verdict(iv: Interval) -> str | None:
    return stats.verdict(iv.low, iv.high)
