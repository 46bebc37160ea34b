"""Where a restored worker lands: a fresh sandbox on this node, or inside a pod (sandbox/pod.py).

A ``Placement`` is what CRIU needs besides the images (the descriptors it plugs in for the
worker's network namespace and stdio, the root of its mount namespace, a command to run
under) and where the restored worker's control directory is linked from. ``fresh`` is
``thaw restore`` on a node; ``in_pod`` is the Kubernetes path, where the pod's thaw
entrypoint (its *anchor*) gives the network namespace, the cgroup and the filesystem.
"""

from __future__ import annotations

import errno
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from thaw.config import Settings
from thaw.errors import RestoreError
from thaw.pipeline.instances import Instance
from thaw.sandbox import netns
from thaw.sandbox.pod import STDOUT_FIFO, Anchor, clone_root, release_root
from thaw.store import Manifest

#: how long a restore waits for a pod's entrypoint that has only just started
FIFO_WAIT_S = 10.0


@dataclass
class Placement:
    fds: dict[str, int]  # CRIU inherit_fd key -> descriptor of ours
    run_dir: Path  # where the restored sandbox's ns link goes, as this node sees it
    control_target: Path  # what the link points at, as the worker sees it
    root: str = "/"
    wrapper: list[str] = field(default_factory=list)
    join_ns: list[tuple[str, str]] = field(default_factory=list)  # (namespace, file) CRIU joins instead of making
    netns: int = 0  # inode of a network namespace made for this copy alone (0: a pod's)
    mounted_root: Path | None = None

    def close(self) -> None:
        """After CRIU returned: our descriptors and the root clone go (the worker holds its own)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        if self.mounted_root is not None:
            release_root(self.mounted_root)
            self.mounted_root = None


def fresh(settings: Settings, manifest: Manifest, inst: Instance, net_key: str) -> Placement:
    """A new network namespace and this copy's own log: a sandbox of this node."""
    fds = {net_key: netns.fresh()}
    for key in _stdio_keys(manifest):
        fds[key] = os.open(inst.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return Placement(fds=fds, run_dir=settings.run_dir, control_target=inst.dir, netns=os.fstat(fds[net_key]).st_ino)


def in_pod(settings: Settings, manifest: Manifest, inst: Instance, net_key: str, anchor: Anchor) -> Placement:
    """The pod of ``anchor``: its network namespace, its cgroup, its root filesystem, its log."""
    if not anchor.alive():
        raise RestoreError(f"the pod's thaw entrypoint (pid {anchor.pid}) is gone", hint="the pod restarted or went")
    recorded = manifest.sandbox.get("run_dir")
    if recorded is not None and recorded != anchor.run_dir:
        # the worker's memory holds its THAW_RUN_DIR: it would never find a control directory elsewhere
        raise RestoreError(f"{manifest.name!r} was a worker whose run directory is {recorded}, but this pod's "
                           f"entrypoint uses {anchor.run_dir}", hint="give both pods the same THAW_RUN_DIR")
    fds: dict[str, int] = {}
    try:
        fds[net_key] = anchor.netns_fd()
        # stdout and stderr go to the FIFO the entrypoint relays into the container's log; opening it
        # without blocking needs its reader to be there, which the entrypoint is while it waits
        fifo = anchor.host_path(f"{anchor.control_dir}/{STDOUT_FIFO}")
        for key in _stdio_keys(manifest):
            fds[key] = _open_fifo(fifo, FIFO_WAIT_S, anchor)
        root = settings.run_dir / "roots" / f"{inst.id}-{uuid.uuid4().hex[:6]}"
        clone_root(anchor, root)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    wrapper = [sys.executable, "-m", "thaw.sandbox.incgroup", str(anchor.pid), "--"]
    inst.control, inst.anchor_pid = anchor.host_path(anchor.control_dir), anchor.pid
    # the pod's hostname and IPC are the worker's too: joined, not made anew (making them would also write
    # /proc/sys, read-only in the agent's container)
    join = [(ns, f"/proc/{anchor.pid}/ns/{ns}") for ns in ("uts", "ipc")]
    return Placement(fds=fds, run_dir=anchor.host_path(anchor.run_dir), control_target=Path(anchor.control_dir),
                     root=str(root), wrapper=wrapper, join_ns=join, mounted_root=root)


def _open_fifo(fifo: Path, timeout: float, anchor: Anchor) -> int:
    """The write end of the entrypoint's FIFO. Opening without blocking needs the reader there (ENXIO
    otherwise): the entrypoint makes and opens it as it starts, and a restore may arrive in the same instant."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            return fd
        except (FileNotFoundError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.ENOENT, errno.ENXIO):
                raise
        if time.monotonic() >= deadline or not anchor.alive():
            raise RestoreError(f"the pod's thaw entrypoint (pid {anchor.pid}) is not waiting for a restore: "
                               f"{anchor.control_dir}/{fifo.name} has no reader",
                               hint="is thaw.dev/restore-from in the annotations its downward API volume shows?")
        time.sleep(0.02)


def _stdio_keys(manifest: Manifest) -> list[str]:
    # CRIU names regular files by their path without the leading '/'
    return [path.lstrip("/") for path in manifest.sandbox.get("stdio", []) if path.startswith("/")]
