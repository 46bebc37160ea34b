"""The three strategies in two scenarios: sizes, dollars and savings on hand-computable cases; one seed, one answer."""

from __future__ import annotations

import pytest

from thaw.cost.model import HOURS_PER_MONTH, Inputs, Latencies
from thaw.cost.scenarios import run, scenarios
from thaw.cost.traffic import bursty, steady

LAT = Latencies(source="test", cold=[30.0, 40.0, 50.0], restore=[1.0, 2.0, 3.0, 10.0], restore_fastest=[1.0, 2.0],
                restore_successes=4, restore_attempts=4)


def _inputs(**kw: object) -> Inputs:
    base: dict[str, object] = {"price_per_gpu_hour": 2.0, "capacity": 2.0, "slo_percentile": 90, "slo_seconds": 5,
                               "target_utilization": 1.0, "arrivals": "fluid", "latencies": LAT}
    return Inputs(**{**base, **kw})  # type: ignore[arg-type]


def test_a_constant_load_costs_the_same_whichever_way_workers_start() -> None:
    # 10 req/s for 2 h at 2 req/s per worker: 5 workers all along, whatever the strategy: 10 GPU-hours
    report = run(_inputs(), steady(10, hours=2))
    for sc in report.scenarios:
        for s in sc.strategies:
            assert s.workers == 5 and s.gpu_hours == pytest.approx(10.0), (sc.scenario.name, s.strategy)
            assert s.dollars_per_month == pytest.approx(5 * 2.0 * HOURS_PER_MONTH)
            assert s.slo_met and s.slo_attainment == pytest.approx(1.0)
        assert sc.of("autoscale, restores").savings_vs_warm_pool == pytest.approx(0.0)


def test_a_burst_makes_restores_meet_the_slo_for_less_than_a_warm_pool() -> None:
    # 1 req/s, and 40 req/s for 10 minutes every 2 hours: a warm pool must hold the peak all day
    trace = bursty(base=1, peak=40, every=120, length=10, hours=12)
    measured = LAT.model_copy(update={"restore": [1.0, 2.0, 3.0, 4.0], "restore_successes": 1000,
                                      "restore_attempts": 1000})
    report = run(_inputs(target_utilization=0.8, slo_seconds=10, latencies=measured), trace)
    for sc in report.scenarios:
        warm, cold, restore = (sc.of(s) for s in ("warm pool", "autoscale, cold starts", "autoscale, restores"))
        assert warm.slo_met and warm.workers >= 20  # 40 req/s at 2 each, always on
        assert restore.slo_met, sc.scenario.name
        assert not cold.slo_met, sc.scenario.name  # 30-50 s cold starts cannot catch a burst within 10 s
        assert restore.dollars_per_month < 0.5 * warm.dollars_per_month
        assert restore.savings_vs_warm_pool == pytest.approx(1 - restore.dollars_per_month / warm.dollars_per_month)
    conservative, optimistic = report.scenarios
    restores = "autoscale, restores"
    assert conservative.of(restores).dollars_per_month >= optimistic.of(restores).dollars_per_month


def test_the_scenarios_state_their_assumptions() -> None:
    (cons, _, cons_restore), (opt, _, opt_restore) = scenarios(LAT)
    assert cons.name == "conservative" and opt.name == "optimistic"
    assert cons_restore(None) == pytest.approx(9.79)  # p99 of 1, 2, 3, 10: 3 + 0.97 * 7
    assert cons.restore_success == pytest.approx(0.05 ** (1 / 4))  # lower 95 % bound of 4 clean restores
    assert opt.restore_success == 1.0 and cons.scale_down_delay > opt.scale_down_delay
    assert any("p99" in a for a in cons.assumptions)
    assert "9.79 s" in cons.restore and "2 restores of the fastest set" in opt.restore


def test_the_same_seed_gives_the_same_report_and_another_seed_another() -> None:
    trace = bursty(base=2, peak=20, every=60, length=5, hours=3)
    a = run(_inputs(arrivals="poisson", seed=5), trace)
    b = run(_inputs(arrivals="poisson", seed=5), trace)
    c = run(_inputs(arrivals="poisson", seed=6), trace)
    assert a.model_dump_json() == b.model_dump_json()
    assert a.trace.requests != c.trace.requests
