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
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: mounts every sandbox keeps; / and /proc are handled apart (root and a fresh procfs)
BASE_KEEP = ("/dev", "/sys")
#: a sandbox gets a /dev/shm of its own (a tmpfs CRIU dumps with the worker), unless thaw's own
#: paths live on the host's: concurrent restores sharing the host's /dev/shm collide on the names
#: CRIU gives deleted-but-open files (POSIX semaphores) while it restores them
SHM = "/dev/shm"
#: kept mounts CRIU recreates itself rather than binding from the host
NATIVE = ("/", "/proc", "/sys")
#: mounts kept when present: the NVIDIA driver's libraries on GPU hosts (a squashfs CRIU cannot dump)
OPTIONAL_KEEP = ("/usr/local/nvidia",)


@dataclass
class Layout:
    """Namespaces and mounts of a sandbox; stored in the manifest so that restore rebuilds the same."""

    keep: list[str] = field(default_factory=list)  # mountpoints kept besides / and /proc
    private_net: bool = True
    private_shm: bool = False  # a fresh tmpfs on /dev/shm, dumped and restored with the worker

    def external(self) -> list[str]:
        """Kept mountpoints that CRIU must treat as external bind mounts."""
        return [m for m in self.keep if m not in NATIVE]

    @staticmethod
    def key(mountpoint: str) -> str:
        """The external key of a mountpoint: stable, and free of CRIU's separators."""
        return "thaw" + mountpoint.replace("/", "_").replace(":", "_")

    def dump_externals(self) -> list[str]:
        return [f"mnt[{m}]:{self.key(m)}" for m in self.external()]

    def restore_externals(self) -> list[str]:
        return [f"mnt[{self.key(m)}]:{m}" for m in self.external()]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Layout:
        return cls(keep=list(raw.get("keep", [])), private_net=bool(raw.get("private_net", True)),
                   private_shm=bool(raw.get("private_shm", False)))


def plan(paths: list[str | Path], extra_keep: list[str] | None = None, *, private_net: bool = True) -> Layout:
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
    return Layout(keep=sorted(keep), private_net=private_net, private_shm=private_shm)


def host_mountpoints(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    with open(mountinfo) as f:
        return [_unescape(line.split()[4]) for line in f]


def root_mount_id(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The id of the mount a process sees at its ``/`` (the top one), or None when its root is no mount."""
    with open(mountinfo) as f:
        ids = [line.split()[0] for line in f if _unescape(line.split()[4]) == "/"]
    return ids[-1] if ids else None


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


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    return field.encode().decode("unicode_escape") if "\\" in field else field
