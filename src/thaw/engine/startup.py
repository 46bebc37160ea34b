"""Starting the engine process, and accounting for how long each start-up phase took.

This module imports nothing heavy: ``start()`` sets the process up before torch is
imported, then times that import as the ``imports`` phase.

This is the baseline every restore is compared with. The clock starts when the kernel
created the process (``/proc/self/stat``), so ``interpreter`` covers Python's own start
and whatever ran before the engine's entry point; the phases follow in order::

    interpreter → imports → [cuda_context] → weights → kv → graphs (GPU) | warmup (CPU) → canary

``total`` runs from process creation to the end of the last phase (the moment the
worker parks at its quiesce point); ``unaccounted`` is what no phase claimed.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thaw.engine.options import ServeOptions

log = logging.getLogger("thaw.engine")


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
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime: clock ticks after boot
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def start(opts: ServeOptions) -> int:
    """Start the engine process: pin the CPU ISA, import the engine (timed), hand over to the lifecycle."""
    clock = StartupClock()
    pin_cpu_isa(opts.device)
    with clock.phase("imports"):
        from thaw.engine import lifecycle  # torch, the model, the server stack, thaw.worker
    return lifecycle.serve(opts, clock)


def pin_cpu_isa(device: str) -> None:
    """Keep oneDNN off AMX unless the engine runs on the GPU; call before torch is imported.

    Linux grants AMX to a process only on request (arch_prctl(ARCH_REQ_XCOMP_PERM),
    Linux 5.16+, Documentation/arch/x86/xstate.rst) and CRIU does not restore that
    permission, so a restored CPU worker whose oneDNN chose AMX kernels at start dies
    with ``Illegal instruction`` at its first matmul. AVX512_CORE_BF16 is the best ISA
    below AMX; a CPU without it just uses what it has. An explicit setting wins.
    """
    if device == "cuda":
        return
    if "torch" in sys.modules and "ONEDNN_MAX_CPU_ISA" not in os.environ:
        log.warning("torch was imported before ONEDNN_MAX_CPU_ISA could be set; a restored copy may hit AMX")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
