"""The cost simulation on cases computed by hand: a constant load, a single burst; and its determinism."""

from __future__ import annotations

import numpy
import pytest

from thaw.cost.simulate import Autoscaler, arrivals, simulate


def _fluid(per_minute: list[float]) -> numpy.ndarray:
    return arrivals(per_minute, numpy.random.default_rng(0), "fluid")


def test_a_constant_load_on_a_pool_that_just_keeps_up_waits_for_nothing() -> None:
    # 10 req/s for an hour, 2 req/s per worker: 5 workers serve every request on arrival, 4 fall behind
    load = _fluid([10.0] * 60)
    five = simulate(load, capacity=2, pool=5)
    assert five.requests == 36_000
    assert five.worker_seconds == 5 * 3600
    assert five.attainment(0.001) == pytest.approx(1.0)
    assert five.wait_percentile(99) == pytest.approx(0.0, abs=1e-6)
    four = simulate(load, capacity=2, pool=4)
    # 8 of 10 req/s served: the queue grows by 2 per second, so the request arriving at t waits t / 4 s
    # (served at 10 t / 8); at 5 s, requests up to t = 20 s make it: 200 of 36,000
    assert four.attainment(5.0) == pytest.approx(200 / 36_000, rel=1e-6)
    assert four.wait_percentile(50) == pytest.approx(1800 / 4, rel=1e-4)


def test_autoscaling_a_constant_load_keeps_the_workers_it_starts_with() -> None:
    # target utilisation 0.8: ceil(10 / (2 * 0.8)) = 7 workers from the start, and no reason to change
    scaler = Autoscaler(target_utilization=0.8, interval=10, window=60, scale_down_delay=300)
    out = simulate(_fluid([10.0] * 60), capacity=2, scaler=scaler, start_latency=lambda rng: 30.0)
    assert (out.starts, out.peak_workers) == (0, 7)
    assert out.worker_seconds == 7 * 3600
    assert out.attainment(0.001) == pytest.approx(1.0)


def test_a_single_burst_served_by_restores() -> None:
    """Idle 10 min, 4 req/s for 10 min, idle 10 min; 2 req/s per worker; restores take 2 s.

    By hand: the decision at 610 s sees 40 requests in its 10 s window and 40 queued:
    ceil((4 + 40/10) / 2) = 4 workers, ready at 612 s. They serve 8 req/s while 4 arrive, so the
    48 queued by then drain in 12 s (at 624 s). A request arriving at t in [600, 624) starts at
    612 + (t - 600) / 2: it waits 12 - (t - 600) / 2 s, from 12 s down to 0. More than 5 s: those
    of the first 14 s, 56 of 2,400. At 620 s the decision wants 3 (16 queued), later 2: with a
    60 s stabilisation window one worker stops at 670 s, one at 680 s, and after the burst's last
    decision wanting 2 (1200 s) the last two stop at 1260 s: 60 + 70 + 650 + 650 = 1,430 GPU-seconds.
    """
    burst = _fluid([0.0] * 10 + [4.0] * 10 + [0.0] * 10)
    scaler = Autoscaler(target_utilization=1.0, interval=10, window=10, scale_down_delay=60)
    out = simulate(burst, capacity=2, scaler=scaler, start_latency=lambda rng: 2.0)
    assert out.requests == 2400
    assert (out.starts, out.failed_starts, out.peak_workers) == (4, 0, 4)
    assert out.worker_seconds == pytest.approx(1430)
    assert out.attainment(5.0) == pytest.approx(1 - 56 / 2400, abs=1e-9)
    assert out.wait_percentile(90) == pytest.approx(0.0, abs=1e-6)  # 96 of 2,400 wait at all
    assert out.wait_percentile(99) == pytest.approx(9.0, abs=1e-6)  # the 24 longest waits: 12 down to 9 s


def test_the_same_burst_served_by_cold_starts_misses_what_restores_meet() -> None:
    burst = _fluid([0.0] * 10 + [4.0] * 10 + [0.0] * 10)
    scaler = Autoscaler(target_utilization=1.0, interval=10, window=10, scale_down_delay=60)
    cold = simulate(burst, capacity=2, scaler=scaler, start_latency=lambda rng: 60.0)
    warm = simulate(burst, capacity=2, scaler=scaler, start_latency=lambda rng: 2.0)
    # no worker serves before 670 s: every request of the first 70 s waits longer than 5 s
    assert cold.attainment(5.0) < 1 - 280 / 2400 < warm.attainment(5.0)
    assert cold.wait_percentile(99) > 60


def test_a_failed_start_holds_its_gpu_and_is_retried() -> None:
    burst = _fluid([0.0] * 10 + [4.0] * 10 + [0.0] * 10)
    scaler = Autoscaler(target_utilization=1.0, interval=10, window=10, scale_down_delay=60)
    flaky = simulate(burst, capacity=2, scaler=scaler, start_latency=lambda rng: 2.0, success=0.5,
                     rng=numpy.random.default_rng(3))
    assert flaky.failed_starts > 0 and flaky.starts > 4
    assert flaky.worker_seconds > 1430  # the failed attempts were paid for


def test_poisson_arrivals_are_the_same_for_the_same_seed() -> None:
    rates = [5.0] * 30
    a = arrivals(rates, numpy.random.default_rng([7, 0]))
    b = arrivals(rates, numpy.random.default_rng([7, 0]))
    c = arrivals(rates, numpy.random.default_rng([8, 0]))
    assert numpy.array_equal(a, b) and not numpy.array_equal(a, c)
    assert a.sum() == pytest.approx(5 * 1800, rel=0.05)


def test_give_a_pool_or_an_autoscaler() -> None:
    with pytest.raises(ValueError):
        simulate(_fluid([1.0]), capacity=1)
    with pytest.raises(ValueError):
        simulate(_fluid([1.0]), capacity=1, scaler=Autoscaler())
