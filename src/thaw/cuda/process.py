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

import os
from pathlib import Path

from thaw.errors import HostError, WorkerError

PROC = Path("/proc")
_DEVICE_PREFIX = "/dev/nvidia"


def process_uses_gpu(pid: int) -> bool:
    """True when ``pid`` has a /dev/nvidia* device open or mapped (i.e. holds a GPU right now)."""
    return bool(gpu_handles(pid))


def gpu_handles(pid: int) -> list[str]:
    """The /dev/nvidia* paths ``pid`` has open (``fd N -> path``) or mapped (``map path``), for messages."""
    base = PROC / str(pid)
    found: list[str] = []
    try:
        for fd in sorted(os.listdir(base / "fd"), key=int):
            try:
                target = os.readlink(base / "fd" / fd)
            except OSError:
                continue  # closed meanwhile
            if target.startswith(_DEVICE_PREFIX):
                found.append(f"fd {fd} -> {target}")
        with open(base / "maps") as maps:
            mapped = {line.split(maxsplit=5)[5].strip() for line in maps if _DEVICE_PREFIX in line}
        found.extend(f"map {path}" for path in sorted(mapped))
    except FileNotFoundError as exc:
        raise WorkerError(f"process {pid} does not exist (it exited?)") from exc
    except PermissionError as exc:
        raise HostError(f"cannot read /proc/{pid}: {exc}", hint="run the agent as root") from exc
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents before children."""
    children = _children_map()
    order, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        order.append(current)
        todo.extend(sorted(children.get(current, [])))
    return order


def gpu_processes(root_pid: int) -> list[int]:
    """The processes of ``root_pid``'s tree that hold a GPU: each needs its own lock/checkpoint."""
    result = []
    for pid in descendants(root_pid):
        try:
            if process_uses_gpu(pid):
                result.append(pid)
        except WorkerError:
            continue  # exited while we looked
    return result


def command_line(pid: int) -> str:
    """``pid``'s command line, NUL-separated arguments joined by spaces (for messages); "" when gone."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def parent_pid(pid: int) -> int:
    """``pid``'s parent (0 when gone)."""
    values = _status_field(pid, "PPid:")
    return values[0] if values else 0


def namespace_pid(pid: int) -> int:
    """The pid ``pid`` has inside its own (innermost) pid namespace: the last ``NSpid`` value.

    CRIU restores a tree with the pids it had inside its pid namespace, so this is the
    name of a process that survives a snapshot and a restore; the host pid does not.
    """
    values = _status_field(pid, "NSpid:")
    if not values:
        raise WorkerError(f"process {pid} does not exist (it exited?)")
    return values[-1]


def host_pids(root_pid: int, ns_pids: list[int]) -> dict[int, int]:
    """Host pids of the processes of ``root_pid``'s tree that have the namespace pids ``ns_pids``.

    Returns ``{ns pid: host pid}`` for those found; a restore compares it with what it needs.
    """
    wanted = set(ns_pids)
    found: dict[int, int] = {}
    for pid in descendants(root_pid):
        try:
            inner = namespace_pid(pid)
        except WorkerError:
            continue  # exited while we looked
        if inner in wanted:
            found[inner] = pid
    return found


def _status_field(pid: int, name: str) -> list[int]:
    try:
        with open(PROC / str(pid) / "status") as status:
            for line in status:
                if line.startswith(name):
                    return [int(v) for v in line.split()[1:]]
    except (FileNotFoundError, ProcessLookupError):
        return []
    return []


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children
