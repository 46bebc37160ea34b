"""The GPU steps of the pipeline, on the host side, through thaw.cuda.

Ordering (CUDA driver checkpoint API, probe 2026-11-28): snapshot = freeze hooks in
the worker → lock → checkpoint → CRIU dump; restore = CRIU restore → CUDA restore →
unlock → thaw hooks. A worker that never opened a GPU skips all of it, and hosts
without an NVIDIA driver never load libcuda.

Every process of the worker's tree that holds the GPU takes part (thaw.cuda.tree):
``plan_tree`` before the freeze (refuses what CRIU could not dump), ``confirm_tree``
after it, then every process is locked before any is checkpointed, and restored
before any is unlocked. The manifest names them by their pid inside the sandbox.
"""

from __future__ import annotations

from typing import Any

from thaw.errors import RestoreError

LOCK_TIMEOUT_MS = 10_000


def rollback(pid: int) -> None:
    """Bring every process of worker ``pid``'s tree back to running, wherever a snapshot left it (recovery)."""
    from thaw.cuda.process import descendants
    from thaw.cuda.tree import rollback_tree

    rollback_tree(descendants(pid))


def plan_tree(root: int, parked_ns_pid: int, hooks: list[str]) -> Any:
    """Before the freeze: which GPU processes are checkpointed and which depart; None when none holds a GPU.

    ``parked_ns_pid`` is the pid (inside the sandbox) of the process parked in quiesce(),
    from its readiness marker; ``hooks`` the freeze hooks it registered.
    """
    from thaw.cuda import process

    if not process.gpu_processes(root):
        return None  # a CPU worker: libcuda is never loaded
    from thaw.cuda.tree import plan_tree as plan_gpu_tree

    parked = process.host_pids(root, [parked_ns_pid]).get(parked_ns_pid, root)
    return plan_gpu_tree(root, parked=parked, hooks=hooks)


def confirm_tree(plan: Any) -> list[int]:
    """After the freeze hooks: the host pids whose CUDA state is checkpointed ([] for CPU workers)."""
    if plan is None:
        return []
    from thaw.cuda.tree import confirm_tree as confirm_gpu_tree

    return confirm_gpu_tree(plan)


def record_tree(root: int, pids: list[int]) -> list[dict[str, Any]]:
    """The GPUs the worker sees and the memory its whole tree uses on each, for the manifest (before the lock)."""
    from thaw.cuda.process import descendants
    from thaw.cuda.steps import record_gpus

    return [r.model_dump() for r in record_gpus(root, pids=descendants(root))] if pids else []


def namespace_pids(pids: list[int]) -> list[int]:
    """How the manifest names processes: by their pid inside the sandbox, which a CRIU restore keeps."""
    from thaw.cuda.process import namespace_pid

    return [namespace_pid(pid) for pid in pids]


def checkpoint_tree(pids: list[int]) -> dict[str, float]:
    """Lock every GPU process, then checkpoint every one; all back to running on failure."""
    from thaw.cuda.tree import checkpoint_tree as checkpoint_gpu_tree

    return checkpoint_gpu_tree(pids, LOCK_TIMEOUT_MS)


def rollback_tree(pids: list[int]) -> None:
    """Bring the processes a snapshot checkpointed back to running (after a failed dump, or --leave-running)."""
    from thaw.cuda.tree import rollback_tree as rollback_gpu_tree

    rollback_gpu_tree(pids)


def restore_tree(root: int, ns_pids: list[int], pairs: Any = None) -> dict[str, float]:
    """Restore every GPU process of a CRIU-restored tree, then unlock every one.

    ``ns_pids`` come from the manifest; an artifact from before they were recorded
    held the root's GPU state only.
    """
    from thaw.cuda.tree import host_pids_for, restore_tree as restore_gpu_tree

    pids = host_pids_for(root, ns_pids) if ns_pids else [root]
    return restore_gpu_tree(pids, pairs)


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
