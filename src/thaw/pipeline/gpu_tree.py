"""The GPU steps for a worker's whole process tree (beside the pipeline that sequences them, gpu.py).

A worker is a tree of processes, and more than its root may hold the GPU: a
tensor-parallel engine runs one process per GPU; vLLM and SGLang keep the model in a
child of the process that serves HTTP; torch inductor's compile-worker pool (a
``torch/_inductor/compile_worker`` subprocess and its children) maps /dev/nvidia0 and
/dev/nvidiactl with no CUDA state of its own (seen on the H200, issue 16). CRIU cannot
dump a process that still maps a device ("handle_device_vma plugin failed ... Can't
handle non-regular mapping"), so by the dump every GPU process of the tree must

* have CUDA state the driver checkpoints: it has a driver restore thread, the test
  CRIU's own CUDA plugin applies (``cuda-checkpoint --get-restore-tid``); such
  processes are locked and checkpointed here; or
* be gone: the compile pool is shut down by the worker's torch freeze hook
  (:mod:`thaw.cuda.worker_hooks`) and restarts lazily at the next compile.

Anything else is refused *before* the freeze, naming the process and the fix.

Ordering: lock every process before checkpointing any, and restore every process
before unlocking any, so that no process runs GPU work while a peer's device state is
away (NCCL peers of a tensor-parallel worker wait on each other). A failure part-way
undoes what was done, driven by each process's state::

    plan_tree(root, parked=pid, hooks=[...])   before FREEZE: classify; refuse what cannot work
    confirm_tree(plan)                          after FREEZE: the departing processes are gone
    checkpoint_tree(pids)                       lock all → checkpoint all (all back to RUNNING on failure)
    restore_tree(pids, pairs)                   restore all → unlock all
    rollback_tree(pids)                         back to RUNNING from any state (idempotent)

All pids are host pids; the manifest names processes by their pid inside the sandbox
(:func:`thaw.cuda.process.namespace_pid`), which CRIU keeps across a restore.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from thaw.cuda import checkpointing, process
from thaw.cuda.checkpointing import DEFAULT_LOCK_TIMEOUT_MS, ProcessState
from thaw.cuda.worker_hooks import HOOK as TORCH_HOOK  # the freeze hook that shuts inductor's compile pool down
from thaw.errors import CheckpointError, CudaError, RestoreError, WorkerError
from thaw.model import GpuPair, Phase
from thaw.pipeline.phases import timed

#: how inductor's compile-worker sidecar shows in its command line (torch 2.2 … 2.13)
COMPILE_WORKER_MARK = "torch/_inductor/compile_worker"
#: how long confirm_tree waits for the processes a freeze hook shut down to be gone
DEPART_TIMEOUT_S = 30.0
_POLL_S = 0.02


@dataclass(frozen=True)
class GpuProcess:
    """A process of the worker's tree that holds a GPU (a /dev/nvidia* descriptor or mapping)."""

    pid: int
    command: str
    handles: list[str]
    cuda: bool  # the driver holds CUDA state for it that it can checkpoint
    compile_pool_of: int = 0  # a compile worker: the pid of the process whose pool it belongs to

    def describe(self) -> str:
        command = self.command if len(self.command) <= 120 else self.command[:117] + "..."
        return f"pid {self.pid} ({command or '?'})"


@dataclass(frozen=True)
class TreePlan:
    """What the snapshot does with each GPU process of the tree (see the module docstring)."""

    root: int
    checkpoint: list[GpuProcess] = field(default_factory=list)
    departing: list[GpuProcess] = field(default_factory=list)  # shut down by the worker's freeze hook

    @property
    def empty(self) -> bool:
        return not self.checkpoint and not self.departing


# --- snapshot ---------------------------------------------------------------------------------


def plan_tree(root: int, *, parked: int, hooks: Sequence[str]) -> TreePlan:
    """Classify the GPU processes of ``root``'s tree before the freeze; refuse what cannot be dumped.

    ``parked`` is the host pid of the process parked in ``quiesce()`` (it runs the freeze
    hooks) and ``hooks`` the freeze hooks it registered. A compile pool of the parked
    process departs when its torch hook is registered; any other process without CUDA
    state is refused with CheckpointError, nothing having been frozen yet.
    """
    found = [p for pid in process.gpu_processes(root) if (p := _inspect(pid, root)) is not None]
    plan = TreePlan(root=root)
    refused: list[str] = []
    for proc in found:
        if proc.compile_pool_of and proc.compile_pool_of == parked and TORCH_HOOK in hooks:
            plan.departing.append(proc)
        elif proc.cuda:
            plan.checkpoint.append(proc)
        else:
            refused.append(_why_not(proc, parked))
    if refused:
        raise CheckpointError(
            "cannot snapshot this worker: " + "; ".join(refused),
            hint="nothing was frozen; the worker is still parked",
        )
    return plan


def confirm_tree(plan: TreePlan, *, timeout: float = DEPART_TIMEOUT_S) -> list[int]:
    """After the freeze hooks: wait for the departing processes to go, then check the whole tree again.

    Returns the host pids to checkpoint. Raises CheckpointError when a process still
    holds the GPU without CUDA state (the caller rolls the freeze back).
    """
    deadline = time.monotonic() + timeout
    departing = {p.pid for p in plan.departing}
    while departing and time.monotonic() < deadline:
        departing = {pid for pid in departing if _holds_gpu(pid)}
        if departing:
            time.sleep(_POLL_S)
    now = [p for p in (_inspect(pid, plan.root) for pid in process.gpu_processes(plan.root)) if p is not None]
    stuck = [p for p in now if not p.cuda]
    if stuck:
        raise CheckpointError(
            "after the freeze hooks, " + "; ".join(
                f"{p.describe()} still holds the GPU ({', '.join(p.handles)}) without CUDA state the driver "
                "can checkpoint" for p in stuck),
            hint="a freeze hook was expected to end it (torch's compile-worker pool); "
                 "set TORCHINDUCTOR_COMPILE_THREADS=1 to compile without a pool",
        )
    return [p.pid for p in now]


def checkpoint_tree(pids: Sequence[int], lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS) -> dict[str, float]:
    """Lock every process of ``pids``, then checkpoint every one: RUNNING → CHECKPOINTED.

    On failure every process is brought back to RUNNING and CheckpointError says which
    call failed and whether the rollback worked (the CudaError is its ``__cause__``).
    """
    pids = list(pids)
    not_running = []
    for pid in pids:
        state = checkpointing.get_state(pid)
        if state is not ProcessState.RUNNING:
            not_running.append(f"pid {pid} is {state.name}")
    if not_running:
        raise CheckpointError(
            f"cannot checkpoint the GPU state of the worker: {', '.join(not_running)}, not RUNNING",
            hint="another snapshot may be in progress",
        )
    timings: dict[str, float] = {}
    touched: list[int] = []
    try:
        with timed(timings, Phase.CUDA_LOCK):
            for pid in pids:
                checkpointing.lock(pid, lock_timeout_ms)
                touched.append(pid)
        with timed(timings, Phase.CUDA_CHECKPOINT):
            for pid in pids:
                checkpointing.checkpoint(pid)
    except CudaError as exc:
        raise CheckpointError(f"GPU checkpoint failed: {exc}; {_undo(touched)}") from exc
    return timings


def rollback_tree(pids: Sequence[int]) -> dict[str, float]:
    """Bring every CUDA process of ``pids`` back to RUNNING from wherever a snapshot left it.

    Idempotent: each process's state is asked first; processes without CUDA state are
    skipped. Restores every checkpointed process before unlocking any. Tries them all,
    then raises the first CudaError if one failed (a process marked FAILED cannot be
    rolled back: the worker must be killed).
    """
    states: dict[int, ProcessState] = {}
    for pid in pids:
        try:
            states[pid] = checkpointing.get_state(pid)
        except CudaError as exc:
            if _driver_missing(exc):
                raise
            continue  # no CUDA state in it, or it is gone
    errors: list[CudaError] = []
    timings: dict[str, float] = {}
    for pid, state in states.items():
        if state is ProcessState.FAILED:
            errors.append(CudaError("cuCheckpointProcessGetState", 0, "CU_PROCESS_STATE_FAILED", pid=pid,
                                    detail="the driver marked the process FAILED; the worker must be killed"))
    checkpointed = [pid for pid, state in states.items() if state is ProcessState.CHECKPOINTED]
    if checkpointed:
        with timed(timings, Phase.CUDA_RESTORE):
            for pid in checkpointed:
                try:
                    checkpointing.restore(pid)
                    states[pid] = ProcessState.LOCKED
                except CudaError as exc:
                    errors.append(exc)
    locked = [pid for pid, state in states.items() if state is ProcessState.LOCKED]
    if locked:
        with timed(timings, Phase.CUDA_UNLOCK):
            for pid in locked:
                try:
                    checkpointing.unlock(pid)
                except CudaError as exc:
                    errors.append(exc)
    if errors:
        raise errors[0]
    return timings


# --- restore ----------------------------------------------------------------------------------


def restore_tree(pids: Sequence[int], pairs: Sequence[GpuPair] | None = None) -> dict[str, float]:
    """Restore every process of ``pids`` (CRIU-restored, CHECKPOINTED), then unlock every one.

    ``pairs`` remaps GPUs for all of them. A failure raises RestoreError naming the
    process and the state each was left in; the caller kills the copy.
    """
    pids = list(pids)
    for pid in pids:
        state = checkpointing.get_state(pid)
        if state is not ProcessState.CHECKPOINTED:
            raise RestoreError(f"cannot restore the GPU state of pid {pid}: it is {state.name}, not CHECKPOINTED")
    timings: dict[str, float] = {}
    try:
        with timed(timings, Phase.CUDA_RESTORE):
            for pid in pids:
                checkpointing.restore(pid, list(pairs) if pairs else None)
        with timed(timings, Phase.CUDA_UNLOCK):
            for pid in pids:
                checkpointing.unlock(pid)
    except CudaError as exc:
        raise RestoreError(f"GPU restore failed: {exc}; the processes are {_states_text(pids)}") from exc
    return timings


def host_pids_for(root: int, ns_pids: Sequence[int]) -> list[int]:
    """The host pids, in a CRIU-restored tree under ``root``, of the processes the manifest names by their
    pid inside the sandbox. Raises RestoreError when one is missing (the image and manifest disagree)."""
    found = process.host_pids(root, list(ns_pids))
    missing = [pid for pid in ns_pids if pid not in found]
    if missing:
        raise RestoreError(
            f"the restored worker lacks the process(es) {missing} whose GPU state the snapshot holds "
            f"(found {sorted(found)})",
            hint="the artifact's images and manifest disagree: take a new snapshot",
        )
    return [found[pid] for pid in ns_pids]


# --- internals ---------------------------------------------------------------------------------


def _inspect(pid: int, root: int) -> GpuProcess | None:
    try:
        handles = process.gpu_handles(pid)
    except WorkerError:
        return None  # exited while we looked
    if not handles:
        return None
    return GpuProcess(pid=pid, command=process.command_line(pid), handles=handles, cuda=has_cuda_state(pid),
                      compile_pool_of=_compile_pool_owner(pid, root))


def has_cuda_state(pid: int) -> bool:
    """True when the driver holds checkpointable CUDA state for ``pid``: it has a restore thread.

    This is the test NVIDIA's CUDA plugin for CRIU applies to every process of a tree
    (``cuda-checkpoint --get-restore-tid``: "No need to checkpoint devices" otherwise).
    A driver that cannot be loaded is an error, not a "no".
    """
    try:
        checkpointing.restore_thread_id(pid)
    except CudaError as exc:
        if _driver_missing(exc):
            raise
        return False
    return True


def _compile_pool_owner(pid: int, root: int) -> int:
    """The pid whose inductor compile pool ``pid`` belongs to (the sidecar's parent).

    0 if it is no compile worker."""
    chain = []
    current = pid
    while current > 0:
        chain.append(current)
        if current == root:
            break
        current = process.parent_pid(current)
    for index, member in enumerate(chain):
        if COMPILE_WORKER_MARK in process.command_line(member):
            # the outermost compile worker of the chain is the sidecar: its parent owns the pool
            sidecar = member
            for outer in chain[index + 1:]:
                if COMPILE_WORKER_MARK in process.command_line(outer):
                    sidecar = outer
            return process.parent_pid(sidecar)
    return 0


def _why_not(proc: GpuProcess, parked: int) -> str:
    held = ", ".join(proc.handles)
    if proc.compile_pool_of:
        owner = "the parked process" if proc.compile_pool_of == parked else f"pid {proc.compile_pool_of}"
        return (
            f"{proc.describe()} belongs to torch inductor's compile-worker pool of {owner} and holds the GPU "
            f"({held}) without CUDA state of its own, which CRIU cannot dump. Fix: shut the pool down before "
            "the snapshot: call thaw.cuda.worker_hooks.install() before thaw.worker.quiesce() in the process "
            "that compiles (thaw run --park-at-listen does it for the process it parks), or start that process "
            "with TORCHINDUCTOR_COMPILE_THREADS=1 so that inductor compiles without a pool"
        )
    return (
        f"{proc.describe()} holds the GPU ({held}) but has no CUDA state the driver can checkpoint "
        "(NVML handles, or a device opened directly), which CRIU cannot dump. Fix: make it close those "
        "handles (nvmlShutdown()) or exit before the worker parks"
    )


def _holds_gpu(pid: int) -> bool:
    try:
        return process.process_uses_gpu(pid)
    except WorkerError:
        return False  # gone


def _driver_missing(exc: CudaError) -> bool:
    return exc.code == -1  # LIBRARY_NOT_FOUND / SYMBOL_NOT_FOUND (native.cuda_call)


def _undo(touched: list[int]) -> str:
    if not touched:
        return "no process was locked: the worker is RUNNING"
    try:
        rollback_tree(touched)
    except CudaError as exc:
        return (f"rolling back failed too ({exc}); the processes are {_states_text(touched)} "
                "and the worker must be killed")
    return "rolled back: every process is RUNNING again"


def _states_text(pids: Sequence[int]) -> str:
    parts = []
    for pid in pids:
        try:
            parts.append(f"{pid}: {checkpointing.get_state(pid).name}")
        except CudaError as exc:
            parts.append(f"{pid}: unknown ({exc.name})")
    return ", ".join(parts)


__all__ = [
    "GpuProcess",
    "TreePlan",
    "checkpoint_tree",
    "confirm_tree",
    "has_cuda_state",
    "host_pids_for",
    "plan_tree",
    "restore_tree",
    "rollback_tree",
]
