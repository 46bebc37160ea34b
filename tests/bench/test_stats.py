"""Percentiles and success-rate bounds on data whose answers are known by hand."""

from __future__ import annotations

import pytest

from thaw.bench.stats import distribution, percentile, rate_lower_bound


def test_percentiles_interpolate_between_the_nearest_ranks() -> None:
    data = [10.0, 1.0, 4.0, 3.0, 2.0, 9.0, 5.0, 8.0, 7.0, 6.0]  # 1..10, unordered
    # rank = (n - 1) * p / 100: p50 → 4.5 → between 5 and 6; p90 → 8.1 → 9.1; p99 → 8.91 → 9.91
    assert percentile(data, 50) == pytest.approx(5.5)
    assert percentile(data, 90) == pytest.approx(9.1)
    assert percentile(data, 99) == pytest.approx(9.91)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)


def test_one_sample_is_every_percentile_and_none_gives_no_figure() -> None:
    assert percentile([3.25], 99) == 3.25
    assert percentile([], 50) is None
    empty = distribution([])
    assert empty.count == 0 and empty.p50 is None and empty.max is None


def test_distribution_of_known_data() -> None:
    d = distribution([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert (d.count, d.min, d.max, d.mean) == (8, 2.0, 9.0, 5.0)
    assert d.p50 == pytest.approx(4.5)
    assert d.p90 == pytest.approx(7.6)  # rank 6.3: 7 + 0.3 * (9 - 7)


def test_a_percentile_outside_0_100_is_refused() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 100)


def test_clean_runs_bound_the_success_rate_by_the_rule_of_three() -> None:
    # no failure in n: the exact lower 95 % bound is 0.05 ** (1 / n), about 1 - 3 / n
    assert rate_lower_bound(200, 200) == pytest.approx(0.05 ** (1 / 200))
    assert rate_lower_bound(200, 200) == pytest.approx(1 - 3 / 200, abs=5e-4)
    assert rate_lower_bound(0, 0) is None
    assert rate_lower_bound(0, 10) == 0.0


def test_the_bound_with_failures_matches_the_binomial_tail() -> None:
    # Clopper-Pearson lower bound for 9 of 10 at 95 % one-sided: 0.6058 (tables; beta.ppf(0.05, 9, 2))
    assert rate_lower_bound(9, 10) == pytest.approx(0.6058, abs=1e-4)
    # and it grows with the evidence: 990 of 1000 bound higher than 99 of 100
    assert rate_lower_bound(990, 1000) > rate_lower_bound(99, 100)
