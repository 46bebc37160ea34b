"""The GPU steps of the pipeline, on the host side, through thaw.cuda.

Ordering (CUDA driver checkpoint API, probe 2026-11-28): snapshot = freeze hooks in
the worker → lock → checkpoint → CRIU dump; restore = CRIU restore → CUDA restore →
unlock → thaw hooks. A worker that never opened a GPU skips all of it, and hosts
without an NVIDIA driver never load libcuda.
"""

from __future__ import annotations

from typing import Any

from thaw.errors import RestoreError

LOCK_TIMEOUT_MS = 10_000


def uses_gpu(pid: int) -> bool:
    try:
        from thaw.cuda import process_uses_gpu
    except ImportError:
        return False
    return bool(process_uses_gpu(pid))


def record(pid: int) -> list[dict[str, Any]]:
    """The GPUs the worker sees and the memory it uses on each, for the manifest (before the lock)."""
    from thaw.cuda.steps import record_gpus

    return [r.model_dump() for r in record_gpus(pid)]


def checkpoint(pid: int) -> dict[str, float]:
    """Lock and checkpoint the worker's device state into its host memory."""
    from thaw.cuda.steps import checkpoint_gpu

    return checkpoint_gpu(pid, LOCK_TIMEOUT_MS)


def restore(pid: int, pairs: Any = None) -> dict[str, float]:
    """Restore the device state (onto the GPUs ``pairs`` maps to) and unlock."""
    from thaw.cuda.steps import restore_gpu

    return restore_gpu(pid, pairs)


def rollback(pid: int) -> None:
    """Bring a still-checkpointed original back to running (after a failed dump, or --leave-running)."""
    from thaw.cuda.steps import rollback_gpu

    rollback_gpu(pid)


def plan(recorded: list[dict[str, Any]], target: int | str | None) -> Any:
    """Which GPU each recorded one maps to; refuses (before anything is touched) a wrong chip or too little memory."""
    if not recorded:
        if target is not None:
            raise RestoreError("--gpu was given, but this artifact's worker used no GPU")
        return None
    try:
        from thaw.cuda.steps import plan_gpu_pairs
    except ImportError as exc:
        raise RestoreError(f"this artifact needs a GPU, and thaw.cuda is unavailable: {exc}") from exc
    return plan_gpu_pairs(recorded, target)


def identity() -> dict[str, Any]:
    """The driver version, for the manifest's source info; empty without a driver."""
    try:
        from thaw.cuda import available, driver_version
    except ImportError:
        return {}
    return {"cuda_driver": driver_version()} if available() else {}
