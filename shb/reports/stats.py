"""Intervals for the rates and means that reports show, so that two numbers can be told apart.

Every ASR, over-refusal or accuracy a report prints is a proportion of n judged answers (or
scored documents); it carries a Wilson score interval (Wilson 1927), which stays inside [0, 1]
and behaves at 0 and 1 where the normal approximation collapses. A quantity measured over
several independent draws (a random head-set control drawn with n seeds) carries the mean and
the spread of the draws instead. No torch here.
"""

from __future__ import annotations

import math

import polars as pl

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion; (nan, nan) when n == 0."""
    if not n:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 and n successes the bound is exactly 0 (or 1); the formula leaves rounding dust (2.8e-17).
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def with_wilson(frame: pl.DataFrame, rate: str, n: str, prefix: str | None = None) -> pl.DataFrame:
    """Add ``<prefix>_lo`` / ``<prefix>_hi`` columns: the Wilson interval of ``rate`` over ``n`` trials."""
    prefix = prefix or rate
    if frame.is_empty() or rate not in frame.columns:
        return frame
    lo, hi = [], []
    for r, k in zip(frame[rate].to_list(), frame[n].to_list()):
        if r is None or k is None:
            lo.append(None)
            hi.append(None)
            continue
        a, b = wilson_interval(r * k, int(k))
        lo.append(a)
        hi.append(b)
    return frame.with_columns(pl.Series(f"{prefix}_lo", lo, dtype=pl.Float64),
                              pl.Series(f"{prefix}_hi", hi, dtype=pl.Float64))


def mean_and_spread(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, number of draws) of independent draws; sd is nan for one draw."""
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan"), 0
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan"), len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var), len(values)
