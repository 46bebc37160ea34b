"""Starting the engine process: set it up before torch is imported, then time that import.

This module imports nothing heavy: ``start()`` pins the CPU ISA, times the import of the
engine as the ``imports`` phase (clock.py) and hands over to the lifecycle.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from thaw.engine.clock import StartupClock

if TYPE_CHECKING:
    from thaw.engine.options import ServeOptions

log = logging.getLogger("thaw.engine")


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
