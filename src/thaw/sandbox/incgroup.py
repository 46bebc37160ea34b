"""``python -m thaw.sandbox.incgroup PID -- CMD ...``: join the cgroups of process PID, then become CMD.

(It also gives CMD a writable /proc/sys: see ``writable_proc_sys``.)

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
    writable_proc_sys()
    os.execvp(cmd[0], cmd)


def writable_proc_sys() -> None:
    """A mount namespace of CRIU's own in which /proc/sys is writable.

    A container runtime mounts /proc/sys read-only over the agent's /proc. A worker dumped in a pod
    has that pod's UTS and IPC namespaces, which CRIU recreates and fills through /proc/sys
    (kernel/hostname, IPC limits): "Can't open sysctl kernel/hostname: Read-only file system" was the
    real node's restore error. The read-only mount goes in a private copy of our mounts only.
    """
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
    if "/proc/sys" not in mounts:
        return  # not in a container: /proc/sys is writable as it is
    libc = ctypes.CDLL(None, use_errno=True)
    ms_rec, ms_private, mnt_detach, clone_newns = 0x4000, 0x40000, 2, 0x00020000
    if libc.unshare(clone_newns) != 0 or libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
        sys.exit(f"thaw: cannot make a mount namespace for CRIU: {os.strerror(ctypes.get_errno())}")
    for _ in range(mounts.count("/proc/sys")):
        libc.umount2(b"/proc/sys", mnt_detach)


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
