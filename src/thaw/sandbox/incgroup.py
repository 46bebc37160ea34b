"""``python -m thaw.sandbox.incgroup PID -- CMD ...``: join the cgroups of process PID, then become CMD.

Writes its own pid into the ``cgroup.procs`` file of each of PID's cgroups and execs CMD,
which keeps the pid: CMD and everything it forks are charged to those cgroups. thaw starts
CRIU this way to restore a worker into a pod's cgroup (sandbox/pod.py).

It first joins the node's cgroup namespace (that of pid 1: the agent runs with hostPID), so
that PID's cgroup paths read as the node writes them, not relative to a container's own
namespace; then it finds them under ``$THAW_CGROUP_ROOT`` (default /sys/fs/cgroup; the agent
mounts the node's cgroup tree there). Joining a namespace is why this is a process of its own.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

CLONE_NEWCGROUP = 0x02000000


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m thaw.sandbox.incgroup PID -- CMD [ARGS...]")
    from thaw.sandbox.pod import cgroup_procs, mounted_hierarchies, read_cgroups

    pid, cmd = int(argv[0]), argv[2:]
    join_node_cgroup_namespace()
    root = Path(os.environ.get("THAW_CGROUP_ROOT") or "/sys/fs/cgroup")
    files = cgroup_procs(read_cgroups(pid), mounted_hierarchies(root))
    if not files:
        sys.exit(f"thaw: none of the cgroups of {pid} is mounted under {root}")
    for procs in files:
        try:
            procs.write_text(str(os.getpid()))
        except OSError as exc:
            sys.exit(f"thaw: cannot join cgroup {procs.parent}: {exc.strerror}")
    os.execvp(cmd[0], cmd)


def join_node_cgroup_namespace() -> None:
    try:
        if os.stat("/proc/1/ns/cgroup").st_ino == os.stat("/proc/self/ns/cgroup").st_ino:
            return
        fd = os.open("/proc/1/ns/cgroup", os.O_RDONLY)
    except PermissionError:  # pid 1 is not ours to inspect (a sandboxed host): we are in its namespace anyway
        return
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWCGROUP) != 0:
            sys.exit(f"thaw: cannot join the node's cgroup namespace: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1:])
