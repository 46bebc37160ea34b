"""Prometheus metrics of one agent, served at ``/metrics``.

Kept in a registry of the agent's own (not the process-global default), so that two
agents in one test process never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# phases range from a millisecond (unlock) to minutes (dumping tens of GiB)
PHASE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BYTES_BUCKETS = tuple(float(1 << s) for s in range(20, 41, 2))  # 1 MiB .. 1 TiB
GBPS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.phase_seconds = Histogram(
            "thaw_phase_seconds", "Duration of each phase of a snapshot or restore (from the pipeline's timings)",
            ["operation", "phase"], buckets=PHASE_BUCKETS, registry=r)
        self.operation_seconds = Histogram(
            "thaw_operation_seconds", "Duration of whole operations, by outcome",
            ["operation", "outcome"], buckets=PHASE_BUCKETS, registry=r)
        self.artifact_bytes = Histogram(
            "thaw_artifact_bytes", "Size of artifacts written (snapshot) or read (restore, verify)",
            ["operation"], buckets=BYTES_BUCKETS, registry=r)
        self.throughput = Histogram(
            "thaw_store_throughput_gbps", "Achieved artifact store throughput in GB/s",
            ["direction"], buckets=GBPS_BUCKETS, registry=r)
        self.bytes_total = Counter(
            "thaw_store_bytes", "Artifact bytes moved to or from the store", ["direction"], registry=r)
        self.failures = Counter(
            "thaw_failures", "Failed operations by reason (ThawError.reason)", ["operation", "reason"], registry=r)
        self.canary = Counter(
            "thaw_canary_checks", "Canary checks after restore: match, mismatch, or skipped (none recorded / disabled)",
            ["result"], registry=r)
        self.jobs_running = Gauge("thaw_jobs_running", "Jobs running now", ["operation"], registry=r)
        self.requests_rejected = Counter(
            "thaw_requests_rejected", "API requests refused (unauthorized, invalid, busy)", ["reason"], registry=r)
        for op in ("snapshot", "restore", "verify"):
            self.jobs_running.labels(op)
        for result in ("match", "mismatch", "skipped"):
            self.canary.labels(result)

    def observe_timings(self, operation: str, timings: dict[str, float]) -> None:
        for phase, seconds in timings.items():
            if phase == "total":
                continue
            self.phase_seconds.labels(operation, phase).observe(max(0.0, seconds))

    def observe_transfer(self, direction: str, size: int, gbps: float | None) -> None:
        self.bytes_total.labels(direction).inc(size)
        if gbps:
            self.throughput.labels(direction).observe(gbps)

    def render(self) -> bytes:
        return generate_latest(self.registry)
