"""Three strategies in two scenarios, from measured latencies: the body of ``thaw cost``.

* **warm pool** — the fewest always-on workers whose simulated time to serve meets the SLO;
* **autoscale, cold starts** — the autoscaler (simulate.py) starts workers from scratch;
* **autoscale, restores** — the same autoscaler, starting workers by restoring a snapshot.

The *conservative* scenario is drawn to favour the alternatives to restores: every restore
takes the p99 of all measured restores (concurrent and cold page cache included), restores
fail at the lower 95 % confidence bound of the measured success rate (a failed restore holds
its GPU for its whole duration, then the autoscaler starts another), every cold start takes
only the median of the fastest cold starts, and workers linger 10 minutes before scale-down.
The *optimistic* scenario draws every start from the measured distributions (restores from
the fastest set), with the measured success rate and a 1-minute scale-down delay. Both replay
the same requests (one seed), so their difference is the assumptions alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy

from thaw.bench.schema import BenchResult
from thaw.bench.stats import percentile, rate_lower_bound
from thaw.cost.model import (
    HOURS_PER_MONTH,
    CostReport,
    Inputs,
    Latencies,
    Scenario,
    ScenarioResult,
    Strategy,
    StrategyResult,
    TraceSummary,
)
from thaw.cost.simulate import Autoscaler, Draw, Outcome, arrivals, simulate
from thaw.cost.traffic import Trace
from thaw.errors import ConfigError

CONSERVATIVE_SCALE_DOWN_S = 600
OPTIMISTIC_SCALE_DOWN_S = 60
POOL_LIMIT = 100_000


def latencies_from_bench(result: BenchResult, source: str) -> Latencies:
    """Cold-start and restore latencies of a ``thaw bench`` result (successful runs; attempts for the success rate)."""
    cold = [c.seconds for c in result.cold_starts if c.ok and c.seconds is not None]
    warm_cold = [c.seconds for c in result.cold_starts if c.ok and c.seconds is not None and c.page_cache == "warm"]
    restores = [r.seconds for r in result.restores if r.ok and r.seconds is not None]
    fastest = [r.seconds for r in result.restores
               if r.ok and r.seconds is not None and r.mode == "sequential" and r.page_cache == "warm"]
    if not cold:
        raise ConfigError("--bench", f"{source} has no successful cold start",
                          hint="run thaw bench with --cold 3 or more, or give --cold-start SECONDS")
    if not restores:
        raise ConfigError("--bench", f"{source} has no successful restore", hint="or give --restore SECONDS")
    return Latencies(source=source, cold=cold, cold_fastest=warm_cold, restore=restores, restore_fastest=fastest,
                     restore_successes=len(restores), restore_attempts=len(result.restores))


def scenarios(latencies: Latencies) -> list[tuple[Scenario, Draw, Draw]]:
    """The conservative and the optimistic scenario, each with its cold-start and restore draws."""
    lat = latencies
    cold_fast = lat.cold_fastest or lat.cold
    restore_fast = lat.restore_fastest or lat.restore
    if lat.restore_success is not None or not lat.restore_attempts:
        measured = lower = lat.restore_success if lat.restore_success is not None else 1.0
        counted = "as given"
    else:
        measured = lat.restore_successes / lat.restore_attempts
        lower = rate_lower_bound(lat.restore_successes, lat.restore_attempts) or 0.0
        counted = f"lower 95 % bound of {lat.restore_successes}/{lat.restore_attempts}"
    cold_p50 = percentile(cold_fast, 50) or 0.0
    restore_p99 = percentile(lat.restore, 99) or 0.0
    conservative = Scenario(
        name="conservative",
        cold_start=f"every cold start takes {cold_p50:.2f} s (p50 of the fastest cold starts)",
        restore=f"every restore takes {restore_p99:.2f} s (p99 of all {len(lat.restore)} restores)",
        restore_success=lower,
        scale_down_delay=CONSERVATIVE_SCALE_DOWN_S,
        assumptions=[
            f"restores at p99 ({restore_p99:.2f} s), cold starts at p50 ({cold_p50:.2f} s): favours the alternatives",
            f"restore success {100 * lower:.2f} % ({counted}); a failed restore holds its GPU, then is retried",
            f"idle workers are stopped after {CONSERVATIVE_SCALE_DOWN_S} s without need",
        ],
    )
    optimistic = Scenario(
        name="optimistic",
        cold_start=f"drawn from the {len(lat.cold)} measured cold starts",
        restore=f"drawn from the {len(restore_fast)} restores of the fastest set",
        restore_success=measured,
        scale_down_delay=OPTIMISTIC_SCALE_DOWN_S,
        assumptions=[
            "every start drawn from the measured distributions (restores: one at a time, warm page cache)",
            f"restore success {100 * measured:.2f} % ({'as given' if counted == 'as given' else 'as measured'})",
            f"idle workers are stopped after {OPTIMISTIC_SCALE_DOWN_S} s without need",
        ],
    )
    return [(conservative, _constant(cold_p50), _constant(restore_p99)),
            (optimistic, _empirical(lat.cold), _empirical(restore_fast))]


def run(inputs: Inputs, trace: Trace) -> CostReport:
    """Simulate every strategy in both scenarios over ``trace``; deterministic for ``inputs.seed``."""
    arrived = arrivals(trace.per_minute, numpy.random.default_rng([inputs.seed, 0]), inputs.arrivals)
    pool, pool_outcome = size_warm_pool(arrived, inputs)
    results = []
    for scenario, cold, restore in scenarios(inputs.latencies):
        scaler = Autoscaler(target_utilization=inputs.target_utilization, interval=inputs.interval,
                            window=inputs.window, scale_down_delay=scenario.scale_down_delay,
                            min_workers=inputs.min_workers)
        warm = _result("warm pool", pool_outcome, inputs, trace, workers=pool)
        by_cold = _result("autoscale, cold starts", simulate(
            arrived, capacity=inputs.capacity, scaler=scaler, start_latency=cold,
            rng=numpy.random.default_rng([inputs.seed, 1])), inputs, trace)
        by_restore = _result("autoscale, restores", simulate(
            arrived, capacity=inputs.capacity, scaler=scaler, start_latency=restore, success=scenario.restore_success,
            rng=numpy.random.default_rng([inputs.seed, 2])), inputs, trace)
        strategies = [warm, by_cold, by_restore]
        for s in strategies[1:]:
            if warm.dollars_per_month:
                s.savings_vs_warm_pool = 1 - s.dollars_per_month / warm.dollars_per_month
        results.append(ScenarioResult(scenario=scenario, strategies=strategies))
    summary = TraceSummary(name=trace.name, hours=trace.hours, mean_rate=trace.mean, peak_rate=trace.peak,
                           requests=float(arrived.sum()), per_minute=trace.per_minute)
    return CostReport(inputs=inputs, trace=summary, scenarios=results)


def size_warm_pool(arrived: numpy.ndarray, inputs: Inputs) -> tuple[int, Outcome]:
    """The smallest always-on pool that meets the SLO over ``arrived`` (bisection; the SLO is monotone in size)."""
    target = inputs.slo_percentile / 100

    def meets(n: int) -> Outcome | None:
        outcome = simulate(arrived, capacity=inputs.capacity, pool=n)
        return outcome if outcome.attainment(inputs.slo_seconds) >= target else None

    lo = max(1, math.ceil(float(arrived.mean()) / inputs.capacity))  # fewer cannot even keep up on average
    hi = lo
    found = meets(hi)
    while found is None:
        lo, hi = hi + 1, hi * 2
        if hi > POOL_LIMIT:
            raise ConfigError("--capacity", f"no warm pool up to {POOL_LIMIT} workers meets the SLO",
                              hint="is the per-worker capacity in requests per second?")
        found = meets(hi)
    best = (hi, found)
    while lo < best[0]:
        mid = (lo + best[0]) // 2
        outcome = meets(mid)
        if outcome is not None:
            best = (mid, outcome)
        else:
            lo = mid + 1
    return best


def _result(strategy: Strategy, outcome: Outcome, inputs: Inputs, trace: Trace, workers: int | None = None
            ) -> StrategyResult:
    hours = outcome.worker_seconds * inputs.gpus_per_worker / 3600
    attainment = outcome.attainment(inputs.slo_seconds)
    busy = outcome.workers_per_second
    mean = float(busy.mean()) if len(busy) else float(workers or 0)
    minutes = len(busy) // 60
    per_minute = busy[: minutes * 60].reshape(minutes, 60).mean(axis=1) if minutes else busy
    return StrategyResult(
        strategy=strategy, workers=workers if workers is not None else outcome.peak_workers, mean_workers=mean,
        gpu_hours=hours, dollars_per_month=hours * inputs.price_per_gpu_hour * HOURS_PER_MONTH / trace.hours,
        slo_attainment=attainment, time_to_serve=outcome.wait_percentile(inputs.slo_percentile),
        slo_met=attainment >= inputs.slo_percentile / 100, starts=outcome.starts, failed_starts=outcome.failed_starts,
        workers_per_minute=[round(float(w), 3) for w in per_minute])


def _constant(seconds: float) -> Draw:
    return lambda rng: seconds


def _empirical(samples: list[float]) -> Callable[[numpy.random.Generator], float]:
    values = numpy.asarray(samples, dtype=float)
    return lambda rng: float(values[rng.integers(len(values))])
