"""How long each start-up phase of the engine took: the baseline every restore is compared with.

The clock starts when the kernel created the process (thaw.proc: the process's start
time), so ``interpreter`` covers Python's own start and whatever ran before the engine's
entry point; the phases follow in order::

    interpreter → imports → [cuda_context] → weights → kv → graphs (GPU) | warmup (CPU) → canary

``total`` runs from process creation to the end of the last phase (the moment the
worker parks at its quiesce point); ``unaccounted`` is what no phase claimed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from thaw import proc


class StartupClock:
    def __init__(self) -> None:
        self._t0 = time.perf_counter() - _seconds_since_process_start()
        self.phases: dict[str, float] = {"interpreter": time.perf_counter() - self._t0}
        self.details: dict[str, dict[str, Any]] = {}
        self._end = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        """Time the block as phase ``name``; what the block puts in the yielded dict is kept as its details."""
        details: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            yield details
        finally:
            self._end = time.perf_counter()
            self.phases[name] = self._end - start
            if details:
                self.details[name] = details

    def report(self) -> dict[str, Any]:
        total = self._end - self._t0
        return {
            "phases": {k: round(v, 4) for k, v in self.phases.items()},
            "total": round(total, 4),
            "unaccounted": round(total - sum(self.phases.values()), 4),
            "details": self.details,
        }

    def summary_line(self) -> str:
        r = self.report()
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in r["phases"].items())
        return f"thaw-engine cold start {r['total']:.2f}s: {parts}, unaccounted {r['unaccounted']:.2f}s"


def _seconds_since_process_start() -> float:
    """How long ago the kernel started this process, or 0 where /proc cannot say (10 ms resolution)."""
    try:
        started = proc.start_ticks() / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError):
        return 0.0
