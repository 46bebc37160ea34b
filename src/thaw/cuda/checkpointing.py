"""The CUDA driver's process checkpoint API, called from another process (the agent).

A process's CUDA state moves through::

    RUNNING ──lock──▶ LOCKED ──checkpoint──▶ CHECKPOINTED ──restore──▶ LOCKED ──unlock──▶ RUNNING

``lock`` blocks new CUDA work and waits (up to its timeout) for submitted work to
finish; ``checkpoint`` copies device memory into the process's own host memory and
releases the GPU (afterwards the process holds no /dev/nvidia* fd or mapping, so
CRIU can dump it); ``restore`` re-acquires a GPU (optionally another one, through
``gpuPairs``) and copies the contents back; ``unlock`` lets CUDA calls proceed.

Each function is one driver call on a *host* pid (probe: the API works on host pids of
processes in other pid namespaces). Argument structs are zero-filled, as the driver
requires of every reserved field. Errors raise :class:`thaw.errors.CudaError` naming the
call, the pid and the CUDA error, with a hint where the probe taught us what it means.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from enum import IntEnum

from thaw.cuda import native
from thaw.errors import CudaError
from thaw.gpuid import parse_uuid
from thaw.model.gpu import GpuPair

#: default for ``lock``: how long the driver waits for already-submitted GPU work (0 = forever)
DEFAULT_LOCK_TIMEOUT_MS = 10_000


class ProcessState(IntEnum):
    """``CUprocessState`` (cuda.h)."""

    RUNNING = 0
    LOCKED = 1
    CHECKPOINTED = 2
    FAILED = 3


_COMMON_HINTS = {
    1: "no CUDA process with this pid, or this process may not act on it (run the agent as root)",
    3: "cuInit was not called in this process",
    800: "not permitted: the agent must run as root or as the worker's user",
}

LOCK_HINTS = {
    **_COMMON_HINTS,
    909: "GPU work was still running when the lock timeout expired: the worker must be idle "
    "(parked at its quiesce point) before it is locked",
    401: "the process is not RUNNING (locked or checkpointed already?)",
    801: "this driver cannot checkpoint this process (driver r570+ is needed)",
}

CHECKPOINT_HINTS = {
    **_COMMON_HINTS,
    401: "the process is not LOCKED",
    801: "the process uses memory the driver cannot checkpoint: managed (UVM) or IPC memory "
    "(NVIDIA cuda-checkpoint README, drivers 570/580)",
    2: "not enough host memory to hold the process's GPU contents",
}

RESTORE_HINTS = {
    **_COMMON_HINTS,
    401: "the process is not CHECKPOINTED",
    801: "the process probably still maps GPU memory imported from another process: it must unmap "
    "imported memory before the lock (probe: restore fails with 801, a retry with 304, and the "
    "process stays CHECKPOINTED and must be killed)",
    304: "an OS call failed inside the driver (probe: seen on a retry after 801; also when a restored "
    "process lacks a /proc of its own pid namespace)",
    2: "the target GPU lacks free memory for the checkpointed contents",
}

UNLOCK_HINTS = {
    **_COMMON_HINTS,
    401: "the process is not LOCKED (restore it first; after a failed restore it may be stuck)",
}


def get_state(pid: int) -> ProcessState:
    """The CUDA checkpoint state of ``pid``."""
    state = ctypes.c_int(-1)
    native.cuda_call("cuCheckpointProcessGetState", pid, ctypes.byref(state), pid=pid, hints=_COMMON_HINTS)
    try:
        return ProcessState(state.value)
    except ValueError:
        raise CudaError(
            "cuCheckpointProcessGetState", 0, "CUDA_SUCCESS", pid=pid,
            detail=f"the driver reported a process state thaw does not know: {state.value}",
        ) from None


def restore_thread_id(pid: int) -> int:
    """The thread id of the driver's restore thread inside ``pid`` (CRIU must not treat it specially)."""
    tid = ctypes.c_int(-1)
    native.cuda_call("cuCheckpointProcessGetRestoreThreadId", pid, ctypes.byref(tid), pid=pid, hints=_COMMON_HINTS)
    return tid.value


def lock(pid: int, timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS) -> None:
    """RUNNING → LOCKED. Waits at most ``timeout_ms`` for submitted GPU work (0: no timeout)."""
    args = native.CUcheckpointLockArgs(timeoutMs=max(0, int(timeout_ms)))
    native.cuda_call("cuCheckpointProcessLock", pid, ctypes.byref(args), pid=pid, hints=LOCK_HINTS)


def checkpoint(pid: int) -> None:
    """LOCKED → CHECKPOINTED: device memory moves into the process's host memory; the GPU is released."""
    args = native.CUcheckpointCheckpointArgs()
    native.cuda_call("cuCheckpointProcessCheckpoint", pid, ctypes.byref(args), pid=pid, hints=CHECKPOINT_HINTS)


def restore(pid: int, pairs: Sequence[GpuPair] | None = None) -> None:
    """CHECKPOINTED → LOCKED, on the same GPUs or remapped through ``pairs`` (old UUID → new UUID)."""
    args = restore_args(pairs)
    native.cuda_call("cuCheckpointProcessRestore", pid, ctypes.byref(args), pid=pid, hints=RESTORE_HINTS)


def unlock(pid: int) -> None:
    """LOCKED → RUNNING."""
    args = native.CUcheckpointUnlockArgs()
    native.cuda_call("cuCheckpointProcessUnlock", pid, ctypes.byref(args), pid=pid, hints=UNLOCK_HINTS)


def restore_args(pairs: Sequence[GpuPair] | None) -> native.CUcheckpointRestoreArgs:
    """A zero-filled CUcheckpointRestoreArgs; with pairs, ``gpuPairs``/``gpuPairsCount`` point at them.

    The pair array is kept alive as an attribute of the returned struct for as long as it lives.
    """
    args = native.CUcheckpointRestoreArgs()
    if pairs:
        array = (native.CUcheckpointGpuPair * len(pairs))()
        for slot, pair in zip(array, pairs):
            ctypes.memmove(slot.oldUuid.bytes, parse_uuid(pair.old), 16)
            ctypes.memmove(slot.newUuid.bytes, parse_uuid(pair.new), 16)
        args.gpuPairs = ctypes.cast(array, ctypes.POINTER(native.CUcheckpointGpuPair))
        args.gpuPairsCount = len(pairs)
        args._pairs_keepalive = array
    return args


def supported() -> bool:
    """True when the loaded driver exports the whole checkpoint API (r570+)."""
    lib = native.load_cuda()
    names = ("cuCheckpointProcessLock", "cuCheckpointProcessCheckpoint", "cuCheckpointProcessRestore",
             "cuCheckpointProcessUnlock", "cuCheckpointProcessGetState")
    return lib is not None and all(lib.has(n) for n in names)
