"""What thaw tells a worker process through its environment, read in one place on the worker's side.

thaw sets these when it launches a sandbox (thaw.pipeline.run); settings of thaw itself
come from thaw.config, and no other module of thaw reads the environment. Standard
library only, like the rest of the SDK.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the host directory holding ``ns/<sandbox key>`` links to control directories
RUN_DIR = "THAW_RUN_DIR"
#: the name `thaw run --name` gave the worker
WORKER_NAME = "THAW_WORKER_NAME"
#: where the GPU memory services listen (thaw.gms)
GMS_DIR = "THAW_GMS_DIR"
#: fill reacquired discard-policy memory with a pattern (thaw.memory): 1/true, 0/false, or a 32-bit word
MEMORY_POISON = "THAW_MEMORY_POISON"
#: a pod's annotations as its downward API volume shows them (thaw.sandbox.entrypoint)
POD_INFO = "THAW_POD_INFO"


def run_dir() -> Path | None:
    """The run directory, or None outside a thaw sandbox."""
    value = os.environ.get(RUN_DIR)
    return Path(value) if value else None


def worker_name() -> str | None:
    return os.environ.get(WORKER_NAME) or None


def gms_dir() -> Path | None:
    value = os.environ.get(GMS_DIR)
    return Path(value) if value else None


def memory_poison() -> str:
    """The raw THAW_MEMORY_POISON value ("" when unset); thaw.memory interprets it."""
    return os.environ.get(MEMORY_POISON, "").strip().lower()


def pod_info() -> Path | None:
    """Where a pod's entrypoint reads the pod's annotations, when the pod says so."""
    value = os.environ.get(POD_INFO)
    return Path(value) if value else None
