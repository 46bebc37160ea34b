"""io_uring instances a worker must not hold when it is snapshotted, found before the freeze.

CRIU 4.1 cannot checkpoint an io_uring: it stops at the ring's mapping with "Unknown shit
600 (anon_inode:[io_uring])", after thaw has frozen the worker. The usual holder is an
event loop built on libuv >= 1.45 (uvloop, which uvicorn picks when it is installed):
libuv sets a ring up when the loop starts, and ``UV_USE_IO_URING=0`` does not stop that
(seen with uvloop 0.23 on the H200 machine, bench/results/2026-11-30-h200-listen).
Found in the process table instead (thaw.proc), before anything is frozen, and named with the fix.
"""

from __future__ import annotations

from thaw import proc
from thaw.errors import CheckpointError

IO_URING = "anon_inode:[io_uring]"
FIX = ("run the event loop without io_uring: uvicorn --loop asyncio (or loop='asyncio' in uvicorn.run), or "
       "uninstall uvloop; with thaw run --park-at-listen thaw keeps uvloop out of the server unless "
       "THAW_PARK_KEEP_UVLOOP=1; nothing was frozen")


def holders(pids: list[int]) -> list[tuple[int, str]]:
    """(pid, where) for each process of ``pids`` that holds an io_uring, by descriptor or by mapping."""
    found = []
    for pid in pids:
        where = _by_fd(pid) or _by_mapping(pid)
        if where:
            found.append((pid, where))
    return found


def refuse_io_uring(worker: str, root_pid: int) -> None:
    """CheckpointError naming the processes of the sandbox rooted at ``root_pid`` that hold an io_uring."""
    held = holders(proc.descendants(root_pid))
    if held:
        names = "; ".join(f"pid {pid} ({where})" for pid, where in held[:5])
        raise CheckpointError(f"snapshot of {worker!r} refused: it holds an io_uring, which CRIU cannot snapshot: "
                              f"{names}", hint=FIX)


def _by_fd(pid: int) -> str:
    try:
        targets = proc.fd_targets(pid)
    except OSError:
        return ""
    return next((f"fd {fd}" for fd, target in targets.items() if target == IO_URING), "")


def _by_mapping(pid: int) -> str:
    # a ring stays mapped after its descriptor is closed, and CRIU fails on the mapping alone
    try:
        regions = proc.mappings(pid)
    except OSError:
        return ""
    return next((f"mapping {where}" for where, name in regions if name == IO_URING), "")
