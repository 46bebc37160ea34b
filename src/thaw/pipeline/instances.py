"""The workers thaw runs on this node: one directory each, which is also their control directory.

::

    <home>/instances/<id>/
        instance.json   what thaw knows of it (Instance)
        ready.json, command.json, reply.json, worker.log   (worker/protocol.py)
        op.lock         held (flock) while an operation runs on this worker
        ops/            CRIU logs of the operations on it

A restore marks its instance ``restoring`` with its own pid as ``owner_pid`` until the
restored worker passed its thaw hooks and canary; a snapshot records its attempt
(``snapshotting``: the snapshotting pid, the artifact it stages, the phases it reached)
until it is done. If that process dies without unwinding (SIGKILL, OOM, an agent that
was killed), recovery.py settles what it left: it kills a half-restored copy, and rolls a
half-snapshotted worker back (or finishes what was asked of it) and removes its staging.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from thaw import proc
from thaw.config import Settings
from thaw.errors import BusyError, ConfigError, WorkerNotFound
from thaw.model import SandboxLayout, check_name
from thaw.worker import protocol


class SnapshotAttempt(BaseModel):
    """A snapshot in progress on a worker, recorded so that recovery can undo exactly what it did."""

    owner_pid: int  # the snapshotting process
    artifact: str
    leave_running: bool = False
    artifact_id: str = ""  # once staged: the store's id of the new artifact ...
    staged_dir: str = ""  # ... and where it is written
    phases: list[str] = Field(default_factory=list)  # the phases started so far, in order
    gpu_pids: list[int] = Field(default_factory=list)  # host pids whose GPU state may be locked or checkpointed
    released: bool = False  # the original was let go (to answer the HTTP canary): it serves, it is not parked

    @property
    def phase(self) -> str:
        return self.phases[-1] if self.phases else ""


class Instance(BaseModel):
    """One worker sandbox on this node, launched (``thaw run``) or restored from an artifact."""

    id: str
    name: str
    dir: Path
    host_pid: int = 0
    pidns: int = 0
    ns_key: str = ""  # names the sandbox's link in <home>/run/ns (worker/protocol.py)
    holder_pid: int = 0  # `unshare` of a launched sandbox; 0 for restored ones
    owner_pid: int = 0  # the process restoring this instance, while state is "restoring"
    netns: int = 0  # restored: inode of the network namespace its restore made for it alone (see kill)
    argv: list[str] = Field(default_factory=list)
    origin: str = "launched"  # or "restored"
    artifact: str | None = None  # restored from
    state: str = "starting"  # starting | restoring | running | snapshotted | stopped | exited | failed
    node: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    layout: SandboxLayout = Field(default_factory=SandboxLayout)
    snapshotting: SnapshotAttempt | None = None
    #: a pod's worker (sandbox/pod.py): its control directory as this node sees it, inside the pod
    #: (/proc/<entrypoint>/root/...); None: ``dir`` is the control directory
    control: Path | None = None
    #: a pod's worker: host pid of the pod's thaw entrypoint, whose namespaces and cgroup it shares
    anchor_pid: int = 0

    @property
    def control_dir(self) -> Path:
        """Where the worker reads commands and writes its replies and readiness marker."""
        return self.control or self.dir

    @property
    def log(self) -> Path:
        return self.control_dir / protocol.WORKER_LOG

    def alive(self) -> bool:
        """True while the sandbox's pid 1 runs (and the pid was not reused by another process)."""
        if self.host_pid <= 0:
            return False
        try:
            if proc.ns_inode(self.host_pid, "pid") != self.pidns:
                return False
        except proc.Gone:
            return False
        return not proc.zombie(self.host_pid)

    def ready(self) -> protocol.ReadyMarker | None:
        raw = protocol.read_json(self.control_dir / protocol.READY)
        return protocol.decode_ready(raw) if raw else None

    def parked(self) -> bool:
        """Waiting at its quiesce point: alive, with a readiness marker of this sandbox (the SDK removes
        the marker when quiesce() returns, so a serving worker has none)."""
        if not self.alive():
            return False
        marker = self.ready()
        return marker is not None and marker.pidns == self.pidns

    def save(self) -> None:
        protocol.write_json_atomic(self.dir / "instance.json", self.model_dump(mode="json"))

    def log_tail(self, n: int = 20) -> str:
        """The end of the worker's log, or of the sandbox set-up's log if the worker never started."""
        for path in (self.log, self.dir / "sandbox.log"):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if lines:
                return "\n".join(lines[-n:])
        return ""

    @contextmanager
    def operation(self, what: str) -> Iterator[None]:
        """Hold this worker for one operation; a concurrent one gets BusyError naming ours."""
        path = self.dir / "op.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = path.read_text().strip() or "another operation"
                raise BusyError(f"worker {self.name!r} is busy: {held} is running on it",
                                hint="wait for it to finish") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{what} (pid {os.getpid()})".encode())
            yield
        finally:
            os.close(fd)  # closing releases the lock, also when this process dies

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the sandbox (pid 1 takes its whole namespace with it) and wait until it is gone.

        A restored copy whose pid thaw never learnt is found by the network namespace its
        restore made for it alone: CRIU finishes a restore even when nobody waits for its
        answer any more (the restorer was interrupted or killed while CRIU worked).
        """
        pids = [self.host_pid] if self.alive() else []
        if not self.host_pid and self.netns:
            # sandboxes of this thaw home only (by THAW_RUN_DIR): another home's may share nothing with us
            pids = proc.in_netns(self.netns, env=f"{protocol.ENV_RUN_DIR}={self.dir.parent.parent / 'run'}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in {self.host_pid, *pids}:
            reap(pid, timeout)
        if self.holder_pid:
            reap(self.holder_pid, timeout)
        self.unlink()

    def unlink(self) -> None:
        """Remove this sandbox's ns link if it still points here: no later sandbox may find this directory."""
        if not self.ns_key:
            return
        link = protocol.ns_link(self.dir.parent.parent / "run", self.ns_key)
        try:
            if Path(os.readlink(link)) == self.dir:
                link.unlink()
        except OSError:
            pass


def reap(pid: int, timeout: float = 10.0) -> None:
    """Wait for ``pid`` to be gone; reap it if it is our child (the dumped pid must be reaped before a restore)."""
    if pid <= 0:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child: wait until it disappears
            if not proc.running(pid):
                return
        time.sleep(0.005)


def create(settings: Settings, name: str, **fields: Any) -> Instance:
    check_name(name, what="worker name")
    iid = f"{name}-{uuid.uuid4().hex[:8]}"
    d = settings.instances_dir / iid
    d.mkdir(parents=True)
    (d / "ops").mkdir(mode=0o700)  # CRIU logs: paths and errors of the worker, for root only
    inst = Instance(id=iid, name=name, dir=d, node=settings.node, **fields)
    inst.save()
    return inst


def load(path: Path) -> Instance:
    return Instance.model_validate_json((path / "instance.json").read_text())


def all_instances(settings: Settings) -> list[Instance]:
    out = []
    if settings.instances_dir.is_dir():
        for d in settings.instances_dir.iterdir():
            try:
                out.append(load(d))
            except (OSError, ValueError):
                continue
    return sorted(out, key=lambda i: i.created_at, reverse=True)


def find(settings: Settings, ref: str, *, alive: bool = True) -> Instance:
    """The instance with id ``ref``, else the newest live one named ``ref`` (the newest of any, with alive=False)."""
    if not ref:
        raise ConfigError("worker", "no worker given",
                          hint="name it as `thaw run --name NAME` did; `thaw ps` lists them")
    candidates = all_instances(settings)
    for inst in candidates:
        if inst.id == ref:
            return inst
    named = [i for i in candidates if i.name == ref]
    for inst in named:
        if inst.alive():
            return inst
    if named and not alive:
        return named[0]
    if named:
        raise WorkerNotFound(f"worker {ref!r} is not running (last state: {named[0].state})",
                             hint="`thaw ps --all` shows past workers")
    raise WorkerNotFound(f"no worker named {ref!r} on this node", hint="`thaw ps` lists the running workers")


#: states after which an instance never runs again: its directory is kept only for `thaw ps --all` and its logs
FINAL_STATES = ("stopped", "exited", "failed", "snapshotted")


def prune(settings: Settings, older_than_s: float) -> list[Instance]:
    """Remove the directories of instances that are gone and last changed more than ``older_than_s`` ago.

    Only instances in a final state whose sandbox is no longer alive go (a live or
    restoring one never does); a directory without a readable instance.json goes by its age.
    """
    pruned: list[Instance] = []
    now = time.time()
    if not settings.instances_dir.is_dir():
        return pruned
    for d in settings.instances_dir.iterdir():
        try:
            age = now - max(d.stat().st_mtime, (d / "instance.json").stat().st_mtime)
        except FileNotFoundError:
            age = now - d.lstat().st_mtime
        if age < older_than_s or d.is_symlink() or not d.is_dir():
            continue
        try:
            inst = load(d)
        except (OSError, ValueError):
            inst = None
        if inst is not None and (inst.state not in FINAL_STATES or inst.alive() or proc.holders(d)):
            continue
        if inst is not None:
            inst.unlink()
            pruned.append(inst)
        shutil.rmtree(d, ignore_errors=True)
    return pruned
