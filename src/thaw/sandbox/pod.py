"""The pod a worker lives in on Kubernetes: found through its thaw entrypoint, joined at restore.

A restore-from pod runs thaw's entrypoint (``python -m thaw.sandbox.entrypoint``) as
the first process of its container. The node's agent finds that process by the pod's
uid in its cgroup path (``.../pod<uid>/...`` with the cgroupfs driver,
``...-pod<uid with _>.slice/...`` with the systemd driver) and calls it the pod's
*anchor*. A worker restored into the pod then shares, with the anchor:

* the pod's **network namespace**: CRIU recorded the worker's network namespace as
  external and a restore hands it the anchor's (``netns_fd``), so the worker answers at
  the pod IP and a Service routes to it;
* the container's **cgroup** (``incgroup.py``): CRIU is started inside it, and the tree
  it restores inherits it, so the worker is charged to and limited by the pod. (CRIU's own
  ``cgroup_root`` rewrites the cgroup paths recorded at dump; thaw dumps with cgroups
  ignored, because the node owns its cgroups, so there are none to rewrite.)
* the container's **root filesystem** (``clone_root``): CRIU builds the worker's mount
  namespace on a clone of the anchor's root mount, so the worker runs on the pod's image
  and its writable layer, exactly as the snapshotted worker did in its pod.

The worker keeps a pid namespace of its own (it is the init of the namespace it was dumped
in); the entrypoint and the agent tie their lives together instead (entrypoint.py, agent/pods.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from thaw.errors import HostError, WorkerNotFound

#: the marker in the entrypoint's command line (python -m thaw.sandbox.entrypoint)
ENTRYPOINT_MODULE = "thaw.sandbox.entrypoint"
#: where the entrypoint keeps the pod's run directory unless THAW_RUN_DIR says otherwise
DEFAULT_RUN_DIR = "/tmp/thaw"
#: the pod's worker's control directory, under the pod's run directory
WORKER_DIR = "worker"
#: the FIFO a restored worker's stdout and stderr are plugged into: the entrypoint relays it to the
#: container's log, and sees the worker's end when the FIFO's last writer (the worker) is gone
STDOUT_FIFO = "stdout.fifo"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Anchor:
    """A pod's thaw entrypoint, by host pid, and where the pod keeps its worker's control directory."""

    pid: int
    run_dir: str = DEFAULT_RUN_DIR  # inside the pod

    def host_path(self, inside: str | Path) -> Path:
        """A path of the pod's filesystem as this node sees it (through the anchor's root)."""
        return Path(f"/proc/{self.pid}/root") / str(inside).lstrip("/")

    @property
    def control_dir(self) -> str:
        """The worker's control directory, as the worker sees it."""
        return f"{self.run_dir.rstrip('/')}/{WORKER_DIR}"

    def netns_fd(self) -> int:
        """An fd of the pod's network namespace (the caller closes it)."""
        return os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY)

    def alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                return ENTRYPOINT_MODULE.encode() in f.read()
        except (FileNotFoundError, ProcessLookupError):
            return False


def read_cgroups(pid: int | str) -> dict[str, str]:
    """``/proc/PID/cgroup`` as {hierarchy: path}: v1 lines by their controller list ("cpu,cpuacct",
    "name=systemd"), the v2 line as ""."""
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            out[controllers] = path
    return out


def mounted_hierarchies(root: Path = CGROUP_ROOT) -> dict[str, Path]:
    """{hierarchy: mountpoint} of the cgroup file systems under ``root`` (v2 as "")."""
    out: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, point, super_opts = fields[sep + 1], Path(fields[4]), fields[-1]
            if not (point == root or root in point.parents):
                continue
            if fstype == "cgroup2":
                out[""] = point
            elif fstype == "cgroup":
                names = [o for o in super_opts.split(",") if o not in ("rw", "ro") and not o.startswith("release_agent")
                         and o not in ("xattr", "noprefix", "clone_children", "cpuset_v2_mode", "nsdelegate")]
                out[",".join(names)] = point
    return out


def cgroup_procs(cgroups: dict[str, str], mounted: dict[str, Path]) -> list[Path]:
    """The ``cgroup.procs`` file of each of ``cgroups`` that is mounted here (v1: every controller's hierarchy,
    matched by its controller set in any order; v2: the one unified hierarchy)."""
    by_set = {frozenset(k.split(",")) if k else frozenset(): v for k, v in mounted.items()}
    files = []
    for hierarchy, path in cgroups.items():
        key = frozenset(hierarchy.split(",")) if hierarchy else frozenset()
        point = by_set.get(key)
        if point is None or (not hierarchy and len(cgroups) > 1 and path == "/"):
            continue  # not mounted here, or the empty v2 hierarchy of a v1 host
        files.append(point / path.lstrip("/") / "cgroup.procs")
    return files


def pod_uid_in(cgroups: dict[str, str]) -> set[str]:
    """The pod uids named in cgroup paths: ``pod<uid>`` (cgroupfs) and ``pod<uid with _>.slice`` (systemd)."""
    uids = set()
    for path in cgroups.values():
        for part in path.split("/"):
            stem = part.removesuffix(".slice")
            if "-pod" in stem:
                stem = stem.rsplit("-pod", 1)[1]
                uids.add(stem.replace("_", "-"))
            elif stem.startswith("pod") and len(stem) > 30:
                uids.add(stem[3:].replace("_", "-"))
    return uids


def find_anchor(pod_uid: str, *, proc: Path = Path("/proc")) -> Anchor:
    """The thaw entrypoint of the pod ``pod_uid`` on this node (hostPID: the agent sees every pod's processes)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if ENTRYPOINT_MODULE.encode() not in cmdline or pod_uid not in pod_uid_in(read_cgroups(entry.name)):
                continue
            if _ns_pid(entry) != 1:  # the container's first process, not a worker it started
                continue
            env = _environ(entry)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        return Anchor(pid=int(entry.name), run_dir=env.get("THAW_RUN_DIR") or DEFAULT_RUN_DIR)
    raise WorkerNotFound(f"pod {pod_uid} runs no thaw entrypoint on this node",
                         hint="its container's command must be `python -m thaw.sandbox.entrypoint -- CMD ...` "
                              "(docs/kubernetes.md, \"The pod entrypoint\")")


def clone_root(anchor: Anchor, dest: Path) -> None:
    """Mount a clone of the anchor's root mount (the container's image and writable layer) on ``dest``.

    Done by a helper process (sandbox/podroot.py): entering another mount namespace needs a
    process of one thread, and the agent has many.
    """
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "thaw.sandbox.podroot", str(anchor.pid), str(dest)],
                          capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise HostError(f"cannot mount the root of pod process {anchor.pid} on {dest}: "
                        f"{proc.stderr.strip() or proc.returncode}",
                        hint="the agent needs CAP_SYS_ADMIN, CAP_SYS_CHROOT and hostPID")


def release_root(dest: Path) -> None:
    """Detach a clone made by ``clone_root`` (the restored worker keeps its own copy of the mount)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).umount2(str(dest).encode(), 2)  # MNT_DETACH
    try:
        dest.rmdir()
    except OSError:
        pass


def sandboxed_worker(anchor: Anchor) -> int:
    """Host pid of the worker sandbox the entrypoint started (the first descendant in a pid namespace of its own)."""
    own = os.stat(f"/proc/{anchor.pid}/ns/pid").st_ino
    todo = [anchor.pid]
    while todo:
        pid = todo.pop(0)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for kid in kids:
            try:
                if os.stat(f"/proc/{kid}/ns/pid").st_ino != own:
                    return kid
            except (FileNotFoundError, ProcessLookupError):
                continue
            todo.append(kid)
    raise WorkerNotFound(f"the thaw entrypoint {anchor.pid} runs no worker sandbox",
                         hint="a snapshot source pod runs its worker in a sandbox: its entrypoint needs CAP_SYS_ADMIN "
                              "(docs/kubernetes.md, \"The pod entrypoint\")")


def run_dir_of(pid: int) -> str:
    """The run directory a pod's worker looks for its control directory in (its THAW_RUN_DIR)."""
    return read_environ(pid).get("THAW_RUN_DIR") or DEFAULT_RUN_DIR


def read_environ(pid: int) -> dict[str, str]:
    """The environment a process started with."""
    return _environ(Path(f"/proc/{pid}"))


def _ns_pid(entry: Path) -> int:
    """The pid of a process in its own (innermost) pid namespace (last field of NSpid)."""
    for line in (entry / "status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return -1


def _environ(entry: Path) -> dict[str, str]:
    out = {}
    for item in (entry / "environ").read_bytes().split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            out[key] = value
    return out
