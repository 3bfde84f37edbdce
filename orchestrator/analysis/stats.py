"""Medians with seeded bootstrap 95% intervals, speedup intervals, and outlier flags.

An interval is either two finite numbers or (None, None): a bootstrap whose resamples give
inf or NaN (a baseline whose median is 0) has no interval, and then no verdict. The inputs
are rates and counts read back through records.py, which never lets a negative or non-finite
value into a measured request, so no interval here has a negative bound.
"""

from __future__ import annotations

import math
from typing import Any, Callable, TypeGuard

import numpy as np
from numpy.typing import ArrayLike, NDArray

RESAMPLES = 2000
SEED = 20261122
CONFIDENCE = 0.95

FloatArray = NDArray[np.float64]
# A statistic of value columns (paired_ci, spread.py): it reduces along the last axis.
Statistic = Callable[..., ArrayLike]


def median_ci(values: ArrayLike) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the median. One value: a zero-width interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None, None
    if x.size == 1:
        return _interval(x)
    meds = np.median(_resample(x, np.random.default_rng(SEED)), axis=1)
    return _interval(meds)


def ratio_ci(num: ArrayLike, den: ArrayLike) -> tuple[float | None, float | None]:
    """Interval of median(num) / median(den), both groups resampled independently (the
    `independent_*` speedup columns: cells whose requests do not pair). One request
    on either side has no spread to resample: no interval, so no verdict from a single pair."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.size < 2 or b.size < 2:
        return None, None
    rng = np.random.default_rng(SEED)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero median: inf or NaN, no interval
        ratios = np.median(_resample(a, rng), axis=1) / np.median(_resample(b, rng), axis=1)
    return _interval(ratios)


def median(values: ArrayLike, axis: int = -1) -> np.float64 | FloatArray:
    """The median along `axis` (paired_ci's statistics reduce along the last axis)."""
    return np.median(np.asarray(values, dtype=np.float64), axis=axis)


def mean(values: ArrayLike) -> float:
    return float(np.mean(np.asarray(values, dtype=float)))


def throughput_ratio(spec_tokens: ArrayLike, spec_s: ArrayLike, base_tokens: ArrayLike, base_s: ArrayLike,
                     axis: int = -1) -> np.float64 | FloatArray:
    """(sum of speculative tokens / their seconds) over (the same for the baseline) along `axis`."""
    with np.errstate(divide="ignore", invalid="ignore"):
        spec = np.sum(spec_tokens, axis=axis) / np.sum(spec_s, axis=axis)
        ratio: np.float64 | FloatArray = spec / (np.sum(base_tokens, axis=axis) / np.sum(base_s, axis=axis))
        return ratio


def paired_ci(statistic: Statistic, *columns: ArrayLike) -> tuple[float | None, float | None]:
    """Interval of `statistic(*columns)` with rows resampled together: row i of every column is
    one request pair, so a pair is never split. `statistic` reduces along the last axis. Fewer
    than two pairs have no spread to resample: no interval."""
    arrays = [np.asarray(c, dtype=float) for c in columns]
    if arrays[0].size < 2:
        return None, None
    idx = np.random.default_rng(SEED).integers(0, arrays[0].size, size=(RESAMPLES, arrays[0].size))
    return _interval(np.asarray(statistic(*(a[idx] for a in arrays)), dtype=float))


def ratio_of_sums_ci(num: ArrayLike, den: ArrayLike) -> tuple[float | None, float | None]:
    """Interval of sum(num) / sum(den) with requests resampled (e.g. accepted / drafted)."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.size == 0 or b.sum() == 0:
        return None, None
    idx = np.random.default_rng(SEED).integers(0, a.size, size=(RESAMPLES, a.size))
    drafted = b[idx].sum(axis=1)
    ok = drafted > 0
    return _interval(a[idx].sum(axis=1)[ok] / drafted[ok])


def narrow_enough(rates: list[float], target: float, fewest: int) -> bool:
    """The median's 95% interval within +-target of the median, from at least `fewest` values
    (one value is a zero-width interval, and no measurement of spread): workload.target_ci."""
    if len(rates) < max(2, fewest):
        return False
    low, high = median_ci(rates)
    med = float(np.median(rates))
    return low is not None and high is not None and med > 0 and (high - low) / 2 <= target * med


def verdict(low: float | None, high: float | None) -> str | None:
    """None unless both bounds are finite numbers: an undefined interval says nothing."""
    if not (_finite(low) and _finite(high)):
        return None
    if low <= 1.0 <= high:
        return "no clear difference"
    return "faster" if low > 1.0 else "slower"


def outliers(values: ArrayLike, rel: float = 0.10, z: float = 3.5) -> list[bool]:
    """Flag values far from the rest: more than `z` robust sigmas (MAD) and more than `rel`
    of the median away. The second test keeps near-identical runs (MAD ~ 0) from flagging
    every small wobble; a 92 among runs of 134 is flagged either way."""
    x = np.asarray(values, dtype=float)
    if x.size < 3:
        return [False] * x.size
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    dev = np.abs(x - med)
    return [bool(d > rel * med and (mad == 0 or d > z * mad)) for d in dev]


def ratio_text(value: object, low: object = None, high: object = None) -> str:
    """'1.52x [1.40-1.66]', '1.52x' without an interval, '-' without a value: the one way orch
    writes a speedup in text."""
    if not _finite(value):
        return "-"
    ci = f" [{low:.2f}-{high:.2f}]" if _finite(low) and _finite(high) else ""
    return f"{value:.2f}x{ci}"


def _resample(x: FloatArray, rng: np.random.Generator) -> FloatArray:
    return x[rng.integers(0, x.size, size=(RESAMPLES, x.size))]


def _interval(samples: FloatArray) -> tuple[float | None, float | None]:
    """Percentile interval; (None, None) when a resample is undefined (0/0) or a bound is not
    finite (a ratio over a zero median)."""
    if samples.size == 0 or np.isnan(samples).any():
        return None, None
    tail = (1 - CONFIDENCE) / 2 * 100
    with np.errstate(invalid="ignore"):
        low, high = np.percentile(samples, [tail, 100 - tail])
    if not (math.isfinite(low) and math.isfinite(high)):
        return None, None
    return float(low), float(high)


def _finite(v: Any) -> TypeGuard[float]:
    """A finite number, whatever a frame's cell holds (math.isfinite judges it); as a TypeGuard it
    lets the bounds it passed be compared."""
    try:
        return v is not None and math.isfinite(v)
    except TypeError:
        return False
