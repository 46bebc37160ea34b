"""Prometheus metrics of one engine, in a registry of its own (served at ``/metrics``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STEP = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1)


class EngineMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("thaw_engine_requests", "Finished requests", ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("thaw_engine_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("thaw_engine_generation_tokens", "Tokens generated", registry=r)
        self.running = Gauge("thaw_engine_requests_running", "Requests in the running batch", registry=r)
        self.waiting = Gauge("thaw_engine_requests_waiting", "Requests waiting for a batch row or KV blocks",
                             registry=r)
        self.kv_blocks = Gauge("thaw_engine_kv_blocks", "KV-cache blocks by state", ["state"], registry=r)
        self.ttft = Histogram("thaw_engine_time_to_first_token_seconds", "Arrival to first token",
                              buckets=_LATENCY, registry=r)
        self.latency = Histogram("thaw_engine_request_seconds", "Arrival to last token", buckets=_LATENCY,
                                 registry=r)
        self.decode_step = Histogram("thaw_engine_decode_step_seconds",
                                     "Steps that only decoded (no prefill), by batch size", ["batch"],
                                     buckets=_STEP, registry=r)
        self.startup = Gauge("thaw_engine_startup_seconds", "Cold-start phases of this process's original start",
                             ["phase"], registry=r)
        self.restored = Gauge("thaw_engine_restored", "1 if this process was restored from a thaw snapshot",
                              registry=r)

    def record_startup(self, report: dict[str, Any], *, restored: bool) -> None:
        for phase, seconds in report["phases"].items():
            self.startup.labels(phase).set(seconds)
        self.startup.labels("total").set(report["total"])
        self.restored.set(1 if restored else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
