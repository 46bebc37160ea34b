"""Percentiles and success rates, the way every thaw benchmark reports them.

Percentiles interpolate linearly between the two nearest ranks (numpy's default method, the
"inclusive" one of :func:`statistics.quantiles`): p50 of [1, 2, 3, 4] is 2.5, p90 of 1..10 is
9.1. A single sample is every percentile of itself; no sample gives no figure (None), never 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy

from thaw.bench.schema import Distribution


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0 < p < 100) of ``values``; None for no values."""
    if not 0 < p < 100:
        raise ValueError(f"percentile {p} is not in (0, 100)")
    if len(values) == 0:
        return None
    return float(numpy.percentile(numpy.asarray(values, dtype=float), p, method="linear"))


def distribution(values: Sequence[float]) -> Distribution:
    """count, min, p50, p90, p99, max and mean of ``values`` (seconds, bytes/s, ...)."""
    data = [float(v) for v in values]
    if not data:
        return Distribution(count=0)
    return Distribution(count=len(data), min=min(data), p50=percentile(data, 50), p90=percentile(data, 90),
                        p99=percentile(data, 99), max=max(data), mean=statistics.fmean(data))


def rate_lower_bound(successes: int, attempts: int, confidence: float = 0.95) -> float | None:
    """The one-sided lower confidence bound of a success rate (Clopper-Pearson; exact, no normal approximation).

    200 successes out of 200 bound the rate at >= 98.5 % with 95 % confidence: an operator who wants
    99.9 % needs about 3,000 clean restores to claim it. None when nothing was attempted.
    """
    if attempts <= 0:
        return None
    if successes >= attempts:
        return (1 - confidence) ** (1 / attempts)
    if successes <= 0:
        return 0.0
    # the smallest rate r for which P(X >= successes | r) >= 1 - confidence, by bisection on the binomial tail
    alpha = 1 - confidence
    lo, hi = 0.0, successes / attempts
    for _ in range(60):
        mid = (lo + hi) / 2
        if _tail_at_least(successes, attempts, mid) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def _tail_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space so that n in the thousands does not overflow."""
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return math.exp(top) * sum(math.exp(t - top) for t in terms)
