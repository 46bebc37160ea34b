"""pid 1 of a new sandbox: finish the namespaces' set-up, then become the worker.

Started by launch.py as ``unshare --pid --fork --mount --propagation private --net
python -m thaw.sandbox.init SPEC -- CMD...``. It runs before any worker code, so it
uses the standard library only and keeps its work short:

1. become a session leader (CRIU refuses a session leader outside the namespace);
2. replace /proc with this pid namespace's procfs;
3. lazily unmount every mount the layout does not keep (innermost first, stacked
   duplicates too, and those that kept mounts cover), so CRIU sees only mounts it can
   dump or re-bind;
4. mount a /dev/shm of its own (unless thaw's paths need the host's) and bring
   loopback up in the new network namespace;
5. link ``<run dir>/ns/<pid-namespace inode>`` to the control directory, so the
   worker SDK finds it;
6. reopen stdio inside the namespace (descriptors opened outside point at mounts the
   dump cannot see), drop to the worker user if one is configured (user.py: no capability,
   no way back) or else, for a pod, drop every capability, and exec the worker, with the
   spec's ``worker_env`` added to its
   environment only (``thaw run --park-at-listen``: this process must not load the
   server's start-up hook).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import struct
import sys

from thaw import proc

MNT_DETACH = 2
# open_tree(2) and move_mount(2) (Linux 5.2), x86_64 syscall numbers
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429
OPEN_TREE_CLONE, AT_RECURSIVE, AT_FDCWD, MOVE_MOUNT_F_EMPTY_PATH = 1, 0x8000, -100, 0x4
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

_libc = ctypes.CDLL(None, use_errno=True)


def _umount(path: str) -> bool:
    return _libc.umount2(path.encode(), MNT_DETACH) == 0


def remount_proc() -> None:
    for _ in range(8):  # /proc may be stacked; detach until none is left
        if not os.path.exists("/proc/self") or not _umount("/proc"):
            break
    if _libc.mount(b"proc", b"/proc", b"proc", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount proc on /proc")


def lift(path: str, depth: int) -> int:
    """Take the mounts at ``path`` out of the tree, keeping a copy of the top one; returns the copy's fd.

    The copy is recursive (what is mounted on it comes along) and only the *top* of a stack
    is kept (the one the host sees, e.g. /dev/shm on Docker): unmounting always removes the
    top, so the top is cloned first, then every mount at ``path`` is detached.
    """
    fd = _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | AT_RECURSIVE)
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"open_tree {path}")
    for _ in range(depth):
        _umount(path)
    return fd


def put_back(fd: int, path: str) -> None:
    try:
        if _libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, path.encode(), MOVE_MOUNT_F_EMPTY_PATH) != 0:
            raise OSError(ctypes.get_errno(), f"move_mount {path}")
    finally:
        os.close(fd)


def trim_mounts(keep: set[str]) -> None:
    """Leave only / (as it is), /proc and the mounts in ``keep``, each the top of its stack.

    Every kept mount is lifted out first, innermost first, so that what it covers can be
    reached and unmounted (a mount under /tmp/x that a tmpfs /tmp hides can be unmounted by
    no path while /tmp is there); then they are put back outermost first, each trimmed of
    what it holds and the next one would cover.
    """
    mounts = proc.mountpoints()
    kept = [m for m in keep - {"/", "/proc"} if m in mounts]
    lifted = [(m, lift(m, mounts.count(m))) for m in sorted(kept, key=lambda p: -p.count("/"))]
    _unmount_all_but({"/", "/proc"})
    for m, fd in reversed(lifted):
        put_back(fd, m)
        _unmount_all_but(keep | {"/", "/proc"})


def _unmount_all_but(keep: set[str]) -> None:
    """Lazily unmount every mount not in ``keep`` (innermost first, stacked duplicates too)."""
    for _ in range(8):
        mounts = proc.mountpoints()
        seen: dict[str, int] = {}
        for m in mounts:
            seen[m] = seen.get(m, 0) + 1
        todo = []
        for m, count in sorted(seen.items(), key=lambda kv: -kv[0].count("/")):
            todo += [m] * (count - 1 if m in keep else count)
        if not todo:
            return
        for m in todo:
            _umount(m)
    raise RuntimeError(f"could not trim mounts; left: {mounts}")


def private_shm() -> None:
    """A /dev/shm of this sandbox's own: a tmpfs that CRIU dumps and restores with the worker."""
    ms_nosuid, ms_nodev = 0x2, 0x4
    if _libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", ms_nosuid | ms_nodev, b"mode=1777") != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs on /dev/shm")


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def link_control_dir(run_dir: str, control_dir: str) -> None:
    from thaw.worker.protocol import link_sandbox, sandbox_key  # standard library only

    link_sandbox(run_dir, sandbox_key(), control_dir)


def drop_capabilities() -> None:
    """No capability for the worker: bounding, ambient, effective, permitted and inheritable sets emptied.

    A pod's worker is started by a privileged entrypoint (it needs CAP_SYS_ADMIN for this sandbox), but
    the worker needs none, and a restore must give back exactly the sets it had: CRIU can give only what
    the agent holds ("Unable to restore capabilities" on the real node, where the pod had caps the agent
    has not).
    """
    pr_capbset_drop, pr_cap_ambient, pr_cap_ambient_clear_all, sys_capset = 24, 47, 4, 126
    for cap in range(proc.cap_last_cap() + 1):
        _libc.prctl(pr_capbset_drop, cap, 0, 0, 0)
    _libc.prctl(pr_cap_ambient, pr_cap_ambient_clear_all, 0, 0, 0)
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = ctypes.create_string_buffer(24)  # two all-zero __user_cap_data_struct
    if _libc.syscall(sys_capset, ctypes.c_char_p(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def reopen_stdio(log: str) -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv: list[str]) -> None:
    if "--" not in argv or argv.index("--") != 1:
        sys.exit("usage: python -m thaw.sandbox.init SPEC_JSON -- CMD [ARGS...]")
    spec = json.loads(argv[0])
    cmd = argv[2:]
    os.setsid()
    remount_proc()
    trim_mounts(set(spec["keep"]))
    if spec.get("private_shm"):
        private_shm()
    if spec.get("private_net", True):
        loopback_up()
    link_control_dir(spec["run_dir"], spec["control_dir"])
    reopen_stdio(spec["log"])
    os.chdir(spec.get("cwd") or "/")
    if spec.get("user"):  # everything that needs root is done: the worker runs unprivileged from here on
        from thaw.sandbox.user import drop  # standard library only

        drop(spec["user"]["uid"], spec["user"]["gid"])
    elif spec.get("drop_caps"):
        drop_capabilities()
    os.environ.update(spec.get("worker_env") or {})
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        # launch.py reads this line (INIT_CANNOT_EXEC) and fails `thaw run` with it
        print(f"thaw sandbox: cannot exec {cmd[0]!r}: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
