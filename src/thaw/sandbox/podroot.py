"""``python -m thaw.sandbox.podroot PID DEST``: mount a clone of process PID's root mount on DEST.

A bind mount cannot take its source from another mount namespace, so this process enters
PID's mount namespace, clones the root there (open_tree, OPEN_TREE_CLONE: a detached copy
of that one mount, not its submounts), goes back to its own namespace and attaches the
clone at DEST (move_mount). setns(2) into a mount namespace needs a process of one thread,
which is why this runs on its own and not in the agent.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
# open_tree(2) and move_mount(2) (Linux 5.2), x86_64 syscall numbers
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, AT_FDCWD, MOVE_MOUNT_F_EMPTY_PATH = 1, 0o2000000, -100, 0x4

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def clone_root(pid: int, dest: str) -> None:
    own = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    theirs = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    try:
        _check(_libc.setns(theirs, CLONE_NEWNS), f"setns into the mount namespace of {pid}")
        tree = _check(_libc.syscall(SYS_OPEN_TREE, root, b"", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | 0x1000),
                      "open_tree")  # 0x1000: AT_EMPTY_PATH, the root itself
        _check(_libc.setns(own, CLONE_NEWNS), "setns back")
        _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, dest.encode(), MOVE_MOUNT_F_EMPTY_PATH),
               f"move_mount to {dest}")
    finally:
        for fd in (own, theirs, root):
            os.close(fd)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m thaw.sandbox.podroot PID DEST")
    try:
        clone_root(int(sys.argv[1]), sys.argv[2])
    except OSError as exc:
        sys.exit(str(exc))
