"""The user a worker runs as: root by default, or a configured unprivileged uid with no capabilities.

thaw itself (the CLI, the agent) stays root: CRIU must be root to dump and restore
another process, and thaw needs CAP_SYS_ADMIN for the sandbox's namespaces and mounts. The
worker needs none of that. With ``THAW_WORKER_USER`` (``NAME``, ``UID`` or ``UID:GID``) the
sandbox's init does everything that needs root first (namespaces, /proc, mounts, loopback,
the control-directory link, stdio), then drops to that user for good, before it execs the
worker (``drop``):

* the capability bounding set is emptied and no_new_privs set, so no setuid binary or file
  capability can give any back;
* supplementary groups are cleared; real, effective and saved uid and gid become the
  worker's, which clears every capability (capabilities(7)).

CRIU records all of this (uids, gids, the capability sets, no_new_privs) and restores it:
a restored copy is exactly as unprivileged as its original (tests/pipeline/test_worker_user.py).

What CRIU needs for that, besides what it always needs (CAP_SYS_ADMIN, CAP_SYS_PTRACE,
CAP_CHECKPOINT_RESTORE, deploy/kubernetes/base/agent/daemonset.yaml): **CAP_SYS_RESOURCE**.
CRIU reads each resource limit of the worker with prlimit(2) from outside, and the kernel
lets a process read another user's limits only with CAP_SYS_RESOURCE (``Can't get rlimit 0:
Operation not permitted`` otherwise; a root without it, as in some sandboxed VMs, can dump
only root's workers). thaw checks before the freeze (``refuse_if_undumpable``) and ``thaw
doctor`` says so.
The worker can then write only its own files in its control directory (owned by root, group
the worker's, mode 1770: the sticky bit keeps it from replacing thaw's files there) and
none of thaw's home: not the agent's state or audit log, not artifacts, not staging.

Standard library only: the sandbox's init imports it.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from thaw import proc

CAP_SYS_RESOURCE = 24
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
#: mode of a control directory shared with an unprivileged worker: root's, the worker's group may add files, the
#: sticky bit lets nobody but a file's owner rename or remove it
CONTROL_DIR_MODE = 0o1770


def drop(uid: int, gid: int) -> None:
    """Become ``uid``:``gid`` for good, with no capability and no way to gain one (see the module docstring)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(proc.cap_last_cap() + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def hand_over(control_dir: Path, log: Path, uid: int, gid: int) -> None:
    """Let the worker ``uid``:``gid`` add its files to ``control_dir`` and write its ``log``; nothing else of thaw's."""
    os.chown(control_dir, 0, gid)
    os.chmod(control_dir, CONTROL_DIR_MODE)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    try:
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def can_dump_other_users() -> bool:
    """True when this process (the one that starts CRIU) holds CAP_SYS_RESOURCE (see the module docstring)."""
    return bool(proc.effective_capabilities() >> CAP_SYS_RESOURCE & 1)


def refusal(worker: str, pid: int) -> str | None:
    """Why CRIU cannot dump ``worker`` (host pid ``pid``) from here, or None when it can."""
    uid, _ = of_process(pid)
    if uid == os.geteuid() or can_dump_other_users():
        return None
    return (f"worker {worker!r} runs as uid {uid}, and CRIU reads another user's resource limits with prlimit(2), "
            "which needs CAP_SYS_RESOURCE: this thaw does not hold it")


def of_process(pid: int) -> tuple[int, int]:
    """The real uid and gid of ``pid`` (the first fields of Uid and Gid in its status)."""
    uid, gid = proc.status_field(pid, "Uid"), proc.status_field(pid, "Gid")
    return int(uid.split()[0]) if uid else 0, int(gid.split()[0]) if gid else 0
