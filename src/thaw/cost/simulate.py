"""The simulation: workers, an autoscaler and a FIFO queue of requests, replayed over a trace.

Time advances in one-second steps. Within each second:

1. the autoscaler decides, every ``interval`` seconds (warm pools never change);
2. workers whose start finishes in this second become ready — or, with probability
   1 − ``success``, their start fails and the GPU is given back (a failed restore);
3. the second's requests arrive (Poisson counts around the trace's rate, or exactly the
   rate with ``arrivals="fluid"``), spread evenly over the second;
4. ready workers serve the queue first-in first-out at ``capacity`` requests per second
   each (a worker that becomes ready half-way through serves half a second's worth).

A request's *time to serve* is how long it waited until a worker began serving it. Within a
second, requests and service are a fluid: the waits of the requests that arrived in one
second run linearly from its first to its last request. GPU time is counted from the moment
a worker is asked for until it is stopped (a start, failed or not, costs GPU time). After
the trace ends, the queue is drained (no new requests) so that every request gets its wait;
that extra time is not billed.

The autoscaler tracks a target utilisation, as Kubernetes' HPA or KEDA would::

    desired = ceil((arrivals in the last `window` s / window + queue / window) / (capacity * target))

it starts workers at once when ``desired`` exceeds the workers it has (ready or starting),
and stops workers only when every decision of the last ``scale_down_delay`` seconds wanted
fewer (HPA's stabilisation window), newest first, starting ones before ready ones.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy

#: a latency draw: seconds from "start a worker" until it serves (a cold start, or a restore)
Draw = Callable[[numpy.random.Generator], float]
DRAIN_LIMIT_S = 24 * 3600


@dataclass(frozen=True)
class Autoscaler:
    target_utilization: float = 0.7
    interval: int = 10  # seconds between decisions
    window: int = 60  # seconds of arrivals the rate estimate averages
    scale_down_delay: int = 300  # HPA's stabilisation window
    min_workers: int = 0
    max_workers: int = 10_000


@dataclass
class Outcome:
    """What one simulated strategy did over the trace."""

    worker_seconds: float
    requests: float
    waits_first: numpy.ndarray = field(repr=False)  # per second of arrivals: wait of its first request
    waits_last: numpy.ndarray = field(repr=False)  # ... and of its last
    counts: numpy.ndarray = field(repr=False)  # requests that arrived in that second
    starts: int = 0
    failed_starts: int = 0
    peak_workers: int = 0
    workers_per_second: numpy.ndarray = field(default_factory=lambda: numpy.zeros(0), repr=False)

    def attainment(self, threshold: float) -> float:
        """The fraction of requests served within ``threshold`` seconds."""
        if self.requests <= 0:
            return 1.0
        return float(numpy.sum(self.counts * _share_within(self.waits_first, self.waits_last, threshold)) /
                     self.requests)

    def wait_percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100) of time to serve, by bisection on the waits' distribution."""
        if self.requests <= 0:
            return 0.0
        target = p / 100
        lo, hi = 0.0, float(max(numpy.max(self.waits_first), numpy.max(self.waits_last), 0.0))
        if self.attainment(lo) >= target:
            return 0.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.attainment(mid) >= target:
                hi = mid
            else:
                lo = mid
        return hi


def _share_within(first: numpy.ndarray, last: numpy.ndarray, x: float) -> numpy.ndarray:
    """The share of each second's requests that waited at most ``x`` (waits spread linearly first → last)."""
    low, high = numpy.minimum(first, last), numpy.maximum(first, last)
    span = high - low
    with numpy.errstate(divide="ignore", invalid="ignore"):
        share = numpy.where(span > 1e-12, (x - low) / numpy.where(span > 1e-12, span, 1.0), (low <= x + 1e-9) * 1.0)
    return numpy.clip(share, 0.0, 1.0)


def arrivals(per_minute: list[float], rng: numpy.random.Generator, mode: str = "poisson") -> numpy.ndarray:
    """Requests arriving in each second of the trace."""
    rates = numpy.repeat(numpy.asarray(per_minute, dtype=float), 60)
    if mode == "fluid":
        return rates
    return rng.poisson(rates).astype(float)


def simulate(arrived: numpy.ndarray, *, capacity: float, pool: int | None = None, scaler: Autoscaler | None = None,
             start_latency: Draw | None = None, success: float = 1.0,
             rng: numpy.random.Generator | None = None) -> Outcome:
    """Replay ``arrived`` (requests per second) with a fixed ``pool`` of ready workers, or with ``scaler``."""
    if (pool is None) == (scaler is None):
        raise ValueError("give a warm pool size or an autoscaler, not both")
    if scaler is not None and start_latency is None:
        raise ValueError("an autoscaler needs the start latency of a worker")
    rng = rng or numpy.random.default_rng(0)
    horizon = len(arrived)
    state = _Workers(capacity)
    if pool is not None:
        state.add_ready(pool, 0.0)
    else:
        assert scaler is not None
        # the trace starts in a steady state: as many workers as the first window's rate wants, remembered as a decision
        first = _desired(scaler, capacity, float(numpy.mean(arrived[: scaler.window])) if horizon else 0.0, 0.0)
        state.add_ready(first, 0.0)
    total = float(arrived.sum())
    cumulative_in = numpy.concatenate([[0.0], numpy.cumsum(arrived)])
    served = [0.0]  # cumulative requests whose service began, at each whole second
    history: list[tuple[int, int]] = [(0, first)] if scaler is not None else []  # (second, desired) decisions
    busy = numpy.zeros(horizon)
    second = 0
    while second < horizon or (served[-1] < total - 1e-9 and second < horizon + DRAIN_LIMIT_S):
        if scaler is not None and second and second % scaler.interval == 0:
            _decide(scaler, state, second, capacity, cumulative_in, served[-1], history, start_latency, success, rng)
        capacity_now = state.capacity_during(second, rng, success)
        came = cumulative_in[min(second + 1, horizon)]
        served.append(min(came, served[-1] + capacity_now))
        if second < horizon:
            busy[second] = state.count()
        second += 1
    state.stop_all(second)
    d = numpy.asarray(served)
    counts = numpy.asarray(arrived, dtype=float)
    seconds = numpy.arange(horizon, dtype=float)
    first = _departure(d, cumulative_in[:-1] + 1e-9) - seconds
    last = _departure(d, cumulative_in[1:]) - (seconds + 1)
    return Outcome(worker_seconds=state.billed(horizon), requests=total, waits_first=numpy.maximum(first, 0.0),
                   waits_last=numpy.maximum(last, 0.0), counts=counts, starts=state.starts,
                   failed_starts=state.failed, peak_workers=int(busy.max()) if horizon else 0, workers_per_second=busy)


def _departure(served: numpy.ndarray, k: numpy.ndarray) -> numpy.ndarray:
    """When the k-th request's service began: the cumulative-service curve inverted (linear within a second)."""
    i = numpy.searchsorted(served, k, side="left")
    i = numpy.clip(i, 1, len(served) - 1)
    lo, hi = served[i - 1], served[i]
    frac = numpy.where(hi > lo, (k - lo) / numpy.where(hi > lo, hi - lo, 1.0), 1.0)
    return (i - 1) + numpy.clip(frac, 0.0, 1.0)


def _desired(scaler: Autoscaler, capacity: float, rate: float, queue: float) -> int:
    want = math.ceil((rate + queue / scaler.window) / (capacity * scaler.target_utilization) - 1e-9)
    return max(scaler.min_workers, min(scaler.max_workers, want))


def _decide(scaler: Autoscaler, state: _Workers, second: int, capacity: float, cumulative_in: numpy.ndarray,
            served: float, history: list[tuple[int, int]], start_latency: Draw | None, success: float,
            rng: numpy.random.Generator) -> None:
    horizon = len(cumulative_in) - 1
    now, back = min(second, horizon), min(max(second - scaler.window, 0), horizon)
    rate = (cumulative_in[now] - cumulative_in[back]) / min(scaler.window, second)  # the first minute: what there is
    desired = _desired(scaler, capacity, rate, cumulative_in[now] - served)
    history.append((second, desired))
    while history and history[0][0] <= second - scaler.scale_down_delay:
        history.pop(0)
    have = state.count()
    if desired > have:
        assert start_latency is not None
        for _ in range(desired - have):
            state.start(second, second + max(0.0, start_latency(rng)))
    else:
        keep = max(d for _, d in history)
        if keep < have:
            state.stop(have - keep, second)


class _Workers:
    """Workers by state: ready, starting (with the second they finish), and the GPU time they were held."""

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.ready: list[float] = []  # start times, oldest first
        self.starting: list[tuple[float, int, float]] = []  # heap: (ready at, id, asked at)
        self.ended: list[tuple[float, float]] = []  # (asked at, ended at) of every worker that ended
        self.starts = 0
        self.failed = 0
        self._ids = 0

    def count(self) -> int:
        return len(self.ready) + len(self.starting)

    def add_ready(self, n: int, at: float) -> None:
        self.ready += [at] * n

    def start(self, asked: float, ready_at: float) -> None:
        self._ids += 1
        self.starts += 1
        heapq.heappush(self.starting, (ready_at, self._ids, asked))

    def capacity_during(self, second: int, rng: numpy.random.Generator, success: float) -> float:
        """Service capacity in [second, second + 1), with the starts that finish in it."""
        workers = float(len(self.ready))
        while self.starting and self.starting[0][0] < second + 1:
            ready_at, _, asked = heapq.heappop(self.starting)
            if success < 1.0 and rng.random() >= success:
                self.failed += 1
                self.ended.append((asked, ready_at))  # a failed start held its GPU until it failed
                continue
            workers += (second + 1) - max(ready_at, float(second))
            self.ready.append(asked)
        return workers * self.capacity

    def stop(self, n: int, at: float) -> None:
        """Stop ``n`` workers: the newest starting ones first, then the newest ready ones."""
        for _ in range(n):
            if self.starting:
                newest = max(self.starting, key=lambda s: s[2])
                self.starting.remove(newest)
                heapq.heapify(self.starting)
                self.ended.append((newest[2], at))
            elif self.ready:
                self.ended.append((self.ready.pop(), at))

    def stop_all(self, at: float) -> None:
        self.stop(self.count(), at)

    def billed(self, horizon: float) -> float:
        """GPU seconds held within [0, horizon]."""
        return sum(max(0.0, min(end, horizon) - min(asked, horizon)) for asked, end in self.ended)
