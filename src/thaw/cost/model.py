"""The inputs and the result of ``thaw cost``, as typed models (the result is its JSON output)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
HOURS_PER_MONTH = 730.0  # 365 × 24 / 12

Strategy = Literal["warm pool", "autoscale, cold starts", "autoscale, restores"]
STRATEGIES: tuple[Strategy, ...] = ("warm pool", "autoscale, cold starts", "autoscale, restores")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Latencies(_Model):
    """Measured start latencies (seconds until the first answer), and where they come from."""

    source: str
    cold: list[float] = Field(min_length=1, description="cold start → first answer")
    cold_fastest: list[float] = Field(default_factory=list,
                                      description="the cold starts of the most favourable condition (warm page "
                                                  "cache); [] = all of cold")
    restore: list[float] = Field(min_length=1, description="restore → first answer, every set")
    restore_fastest: list[float] = Field(default_factory=list,
                                         description="restores of the most favourable set (one at a time, warm page "
                                                     "cache); [] = all of restore")
    restore_successes: int = Field(default=0, ge=0)
    restore_attempts: int = Field(default=0, ge=0)
    restore_success: float | None = Field(default=None, gt=0, le=1,
                                          description="a stated success rate (instead of counts), used as it is")

    @model_validator(mode="after")
    def _counts(self) -> Latencies:
        if self.restore_successes > self.restore_attempts:
            raise ValueError("more successful restores than attempts")
        if any(x < 0 for x in (*self.cold, *self.restore)):
            raise ValueError("a latency is negative")
        return self


class Inputs(_Model):
    price_per_gpu_hour: float = Field(gt=0, description="$ per GPU-hour")
    gpus_per_worker: int = Field(default=1, ge=1)
    capacity: float = Field(gt=0, description="requests per second one worker serves")
    slo_percentile: float = Field(default=90, gt=0, lt=100)
    slo_seconds: float = Field(default=5, gt=0, description="time to serve at slo_percentile must be at most this")
    target_utilization: float = Field(default=0.7, gt=0, le=1)
    interval: int = Field(default=10, ge=1, description="seconds between autoscaler decisions")
    window: int = Field(default=60, ge=1, description="seconds of traffic the autoscaler's rate estimate averages")
    min_workers: int = Field(default=0, ge=0)
    arrivals: Literal["poisson", "fluid"] = "poisson"
    seed: int = 0
    latencies: Latencies


class Scenario(_Model):
    name: Literal["conservative", "optimistic"]
    assumptions: list[str]
    cold_start: str = Field(description="how cold-start latencies are drawn")
    restore: str = Field(description="how restore latencies are drawn")
    restore_success: float = Field(ge=0, le=1)
    scale_down_delay: int = Field(ge=0)


class StrategyResult(_Model):
    strategy: Strategy
    workers: int = Field(description="warm pool: its size; autoscaling: the most workers at once")
    mean_workers: float
    gpu_hours: float = Field(description="over the trace")
    dollars_per_month: float
    slo_attainment: float = Field(description="share of requests served within the SLO's seconds")
    time_to_serve: float = Field(description="seconds, at the SLO's percentile")
    slo_met: bool
    starts: int
    failed_starts: int
    savings_vs_warm_pool: float | None = Field(default=None, description="share of the warm pool's $ saved")
    workers_per_minute: list[float] = Field(default_factory=list, description="mean workers held, minute by minute")


class ScenarioResult(_Model):
    scenario: Scenario
    strategies: list[StrategyResult]

    def of(self, strategy: Strategy) -> StrategyResult:
        return next(s for s in self.strategies if s.strategy == strategy)


class TraceSummary(_Model):
    name: str
    hours: float
    mean_rate: float
    peak_rate: float
    requests: float
    per_minute: list[float] = Field(default_factory=list, description="the trace: req/s in each minute")


class CostReport(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["thaw.cost"] = "thaw.cost"
    inputs: Inputs
    trace: TraceSummary
    scenarios: list[ScenarioResult]
