"""The sandbox layout: which namespaces and mounts a worker lives in.

One description serves both launch (``thaw run``) and restore, so that what CRIU
dumped is exactly what a restore rebuilds:

* a new **pid namespace** whose init is the worker itself (pid 1, its own session:
  CRIU refuses a session leader outside the dumped namespace);
* a new **mount namespace** with a /proc of its own (CUDA fails with error 304 when it
  reads the host's /proc from inside a pid namespace — probe, second part) and only the
  mounts the worker needs: every other mount is lazily unmounted, because CRIU must
  be able to dump or re-bind each remaining one. A mount that contains a kept one is
  kept too (a lazy unmount takes every mount beneath it along: a home under a tmpfs
  ``/tmp`` would vanish with it). Kept mounts other than ``/``,
  ``/proc`` and ``/sys`` are *external*: CRIU records only a key and a restore binds
  the same host path again (e.g. ``/dev``, the driver's ``/usr/local/nvidia``);
* a **/dev/shm of its own** (a tmpfs CRIU dumps with the worker), as containers have, so that
  restored copies never share semaphores or shared-memory files;
* a new **network namespace** (loopback only), dumped with the process: each restored
  copy gets its own, so copies never collide on ports or on libcuda's abstract socket
  (``@cuda-uvmfd-<pidns>-<pid>``). Workers serve on a unix socket in their control
  directory (reachable from the host) or on TCP inside their namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

from thaw import proc
from thaw.model.sandbox import SandboxLayout

#: mounts every sandbox keeps; / and /proc are handled apart (root and a fresh procfs)
BASE_KEEP = ("/dev", "/sys")
#: a sandbox gets a /dev/shm of its own (a tmpfs CRIU dumps with the worker), unless thaw's own
#: paths live on the host's: concurrent restores sharing the host's /dev/shm collide on the names
#: CRIU gives deleted-but-open files (POSIX semaphores) while it restores them
SHM = "/dev/shm"
#: mounts kept when present: the NVIDIA driver's libraries on GPU hosts (a squashfs CRIU cannot dump)
OPTIONAL_KEEP = ("/usr/local/nvidia",)


def plan(paths: list[str | Path], extra_keep: list[str] | None = None, *, private_net: bool = True) -> SandboxLayout:
    """The layout for a worker that must see ``paths`` (its interpreter, working directory, thaw's run dir).

    Every mount under which one of ``paths`` lies is kept, plus the base mounts and
    ``extra_keep``, plus every mount that contains one of those. Only mounts that exist on
    this host are listed.
    """
    mounts = set(host_mountpoints())
    keep = {m for m in BASE_KEEP + OPTIONAL_KEEP if m in mounts}
    keep.update(m for m in (extra_keep or []) if m in mounts)
    for p in paths:
        m = mountpoint_of(Path(p), mounts)
        if m not in ("/", "/proc"):
            keep.add(m)
    keep.update(containing_mounts(keep, mounts))
    private_shm = SHM not in keep and Path(SHM).is_dir()
    return SandboxLayout(keep=sorted(keep), private_net=private_net, private_shm=private_shm)


def host_mountpoints(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    return proc.mountpoints(mountinfo)


def mountpoint_of(path: Path, mounts: set[str]) -> str:
    """The deepest mountpoint that contains ``path``."""
    p = Path(os.path.realpath(path))
    for candidate in (p, *p.parents):
        if str(candidate) in mounts:
            return str(candidate)
    return "/"


def containing_mounts(keep: set[str], mounts: set[str]) -> set[str]:
    """Mountpoints (besides / and /proc) that contain one of ``keep``: trimming one would detach it."""
    return {str(parent) for m in keep for parent in Path(m).parents
            if str(parent) in mounts and str(parent) not in ("/", "/proc")}
