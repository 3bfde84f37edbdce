"""Medians with seeded bootstrap 95% intervals, speedup intervals, and outlier flags."""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
SEED = 20261122
CONFIDENCE = 0.95


def median_ci(values) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the median. One value: a zero-width interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None, None
    if x.size == 1:
        return float(x[0]), float(x[0])
    meds = np.median(_resample(x, np.random.default_rng(SEED)), axis=1)
    return _interval(meds)


def ratio_ci(num, den) -> tuple[float | None, float | None]:
    """Interval of median(num) / median(den), both groups resampled independently."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.size == 0 or b.size == 0:
        return None, None
    rng = np.random.default_rng(SEED)
    ratios = np.median(_resample(a, rng), axis=1) / np.median(_resample(b, rng), axis=1)
    return _interval(ratios)


def ratio_of_sums_ci(num, den) -> tuple[float | None, float | None]:
    """Interval of sum(num) / sum(den) with requests resampled (e.g. accepted / drafted)."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.size == 0 or b.sum() == 0:
        return None, None
    idx = np.random.default_rng(SEED).integers(0, a.size, size=(RESAMPLES, a.size))
    drafted = b[idx].sum(axis=1)
    ok = drafted > 0
    return _interval(a[idx].sum(axis=1)[ok] / drafted[ok])


def verdict(low: float | None, high: float | None) -> str | None:
    if low is None or high is None:
        return None
    if low <= 1.0 <= high:
        return "no clear difference"
    return "faster" if low > 1.0 else "slower"


def outliers(values, rel: float = 0.10, z: float = 3.5) -> list[bool]:
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


def _resample(x: np.ndarray, rng) -> np.ndarray:
    return x[rng.integers(0, x.size, size=(RESAMPLES, x.size))]


def _interval(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)
