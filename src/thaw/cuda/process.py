"""Which processes of a worker's tree hold the GPU, read from /proc.

A CUDA process keeps file descriptors to, and mappings of, the ``/dev/nvidia*`` device
nodes (``/dev/nvidiactl``, ``/dev/nvidia0``, ``/dev/nvidia-uvm``). After a successful
``cuCheckpointProcessCheckpoint`` it holds none (probe: "While checkpointed the worker
has no /dev/nvidia* fds or mappings"), which is also what lets CRIU dump it.

What /proc cannot show: whether a process maps GPU memory *imported* from another
process (``cuMemImportFromShareableHandle``, CUDA IPC). Such memory is mapped on the
GPU only; the received fd may already be closed. The probe found that checkpointing
such a process "succeeds" but its restore fails (801, then 304) and leaves it stuck,
so thaw refuses it where it can know: the worker declares imports through
:func:`thaw.cuda.worker_hooks.declare_imported`, and its freeze hook refuses while any
is still declared. Detecting undeclared imports needs interposing the driver API
(ai-dynamo/snapshot's cuinterpose does that); thaw does not.
"""

from __future__ import annotations

from thaw import proc
from thaw.errors import HostError, WorkerError

_DEVICE_PREFIX = "/dev/nvidia"


def process_uses_gpu(pid: int) -> bool:
    """True when ``pid`` has a /dev/nvidia* device open or mapped (i.e. holds a GPU right now)."""
    return bool(gpu_handles(pid))


def gpu_handles(pid: int) -> list[str]:
    """The /dev/nvidia* paths ``pid`` has open (``fd N -> path``) or mapped (``map path``), for messages."""
    try:
        found = [f"fd {fd} -> {target}" for fd, target in proc.fd_targets(pid).items()
                 if target.startswith(_DEVICE_PREFIX)]
        mapped = {path for path in proc.mapped_paths(pid) if _DEVICE_PREFIX in path}
    except proc.Gone as exc:
        raise WorkerError(f"process {pid} does not exist (it exited?)") from exc
    except PermissionError as exc:
        raise HostError(f"cannot read /proc/{pid}: {exc}", hint="run the agent as root") from exc
    return found + [f"map {path}" for path in sorted(mapped)]


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents before children."""
    return proc.descendants(pid)


def gpu_processes(root_pid: int) -> list[int]:
    """The processes of ``root_pid``'s tree that hold a GPU: each needs its own lock/checkpoint."""
    result = []
    for pid in proc.descendants(root_pid):
        try:
            if process_uses_gpu(pid):
                result.append(pid)
        except WorkerError:
            continue  # exited while we looked
    return result
