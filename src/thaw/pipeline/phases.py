"""Timing every phase of an operation, and one summary line for all of them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from thaw import faults

#: progress callback: (phase, fraction done or None, detail)
Progress = Callable[[str, float | None, str], None]


def no_progress(phase: str, fraction: float | None, detail: str) -> None:
    return None


class Phases:
    """Collects phase durations; ``summary()`` lists them and what no phase accounts for."""

    def __init__(self, progress: Progress | None = None, *, operation: str = "") -> None:
        #: names the fault points of this operation's phases (``snapshot.dump``; thaw.faults)
        self.operation = operation
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.progress = progress or no_progress

    @contextmanager
    def __call__(self, name: str, detail: str = "") -> Iterator[None]:
        self.progress(name, None, detail)
        faults.point(f"{self.operation}.{name}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + seconds

    def total(self) -> float:
        return time.perf_counter() - self.started

    def finish(self) -> dict[str, float]:
        total = self.total()
        out = {k: round(v, 6) for k, v in self.timings.items()}
        out["total"] = round(total, 6)
        out["unaccounted"] = round(max(0.0, total - sum(self.timings.values())), 6)
        return out

    @staticmethod
    def summary(timings: dict[str, float]) -> str:
        return " ".join(f"{k}={v * 1000:.0f}ms" if v < 10 else f"{k}={v:.1f}s" for k, v in timings.items())
