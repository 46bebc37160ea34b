"""What the benchmark does to workers: thaw.ops, in this process or through the node agent.

The benchmark goes the one route every ``thaw`` command goes (thaw.ops.Operations): here,
the pipeline in this process; through the agent, each restore is timed from the request the
agent receives, as an operator's traffic would be (job queue, canary gate, audit log and
all). A failed operation raises a ThawError whose ``reason`` is the pipeline's own
(``canary_mismatch``, ``criu``, ``restore``, ...), also when it failed inside the agent.
``BenchOperations`` adds only what a benchmark needs besides: its handles, and where the
artifact's files and the staging directory lie (to measure the floor of reading them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from thaw import ops as thaw_ops
from thaw.api.client import AgentClient
from thaw.api.models import Worker
from thaw.errors import AgentUnavailable, ThawError, WorkerNotFound
from thaw.model import GpuTarget, Manifest
from thaw.ops.base import Progress
from thaw.store import Store
from thaw.store.directory import DirectoryStore


@dataclass
class Handle:
    """A worker the benchmark started or restored."""

    id: str
    name: str
    control_dir: Path
    host_pid: int


@dataclass
class Restored:
    worker: Handle
    timings: dict[str, float]  # the pipeline's, as it reported them
    canary_checked: bool


class Operations(Protocol):
    """The benchmark runner's port (BenchOperations; tests give it a fake)."""

    through: str

    def launch(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path) -> Handle: ...
    def wait_parked(self, worker: Handle, timeout: float) -> None: ...
    def release(self, worker: Handle) -> None: ...
    def snapshot(self, worker: Handle, artifact: str, *, ready_timeout: float,
                 progress: Progress | None = None) -> dict[str, float]: ...
    def restore(self, artifact: str, *, name: str, gpu: GpuTarget | None,
                progress: Progress | None = None) -> Restored: ...
    def stop(self, worker: Handle) -> None: ...
    def alive(self, worker: Handle) -> bool: ...
    def manifest(self, artifact: str) -> Manifest: ...
    def delete(self, artifact: str) -> None: ...
    def artifact_files(self, artifact: str) -> list[Path] | None: ...
    def locations(self) -> tuple[Path | None, Path | None]: ...


class BenchOperations:
    """The benchmark's operations over thaw.ops (``LocalOperations`` or ``AgentOperations``)."""

    def __init__(self, ops: thaw_ops.Operations) -> None:
        self.ops = ops
        self._root: Path | None = None
        self._staging: Path | None = None
        if isinstance(ops, thaw_ops.LocalOperations):
            self.through = "local"
            store = ops.store
            self._root = store.root if isinstance(store, DirectoryStore) else None
            self._staging = ops.settings.staging_dir
        else:
            self.through = ops.where.removeprefix("the ")  # "agent at /run/thaw/agent.sock"
            if isinstance(ops, thaw_ops.AgentOperations):
                self._root, self._staging = _agent_locations(ops.client)

    def launch(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path) -> Handle:
        return _handle(self.ops.launch(name, argv, env=env, cwd=cwd))

    def wait_parked(self, worker: Handle, timeout: float) -> None:
        self.ops.wait_ready(worker.id, timeout)

    def release(self, worker: Handle) -> None:
        self.ops.release(worker.id)

    def snapshot(self, worker: Handle, artifact: str, *, ready_timeout: float,
                 progress: Progress | None = None) -> dict[str, float]:
        result = self.ops.snapshot(worker.id, artifact, leave_running=False, ready_timeout=ready_timeout,
                                   canary_http=[], progress=progress or _quiet)
        return dict(result.timings)

    def restore(self, artifact: str, *, name: str, gpu: GpuTarget | None,
                progress: Progress | None = None) -> Restored:
        result = self.ops.restore(artifact, name=name, gpu=gpu, verify_canary=True, digest=None,
                                  progress=progress or _quiet)
        return Restored(worker=_handle(result.worker), timings=dict(result.timings),
                        canary_checked=result.canary.checked)

    def stop(self, worker: Handle) -> None:
        self.ops.stop(worker.id)

    def alive(self, worker: Handle) -> bool:
        try:
            return self.ops.worker(worker.id).alive
        except WorkerNotFound:
            return False
        except (AgentUnavailable, ThawError):
            return True  # the agent could not say (busy, restarting): the caller's deadline bounds the wait

    def manifest(self, artifact: str) -> Manifest:
        return self.ops.inspect(artifact).manifest

    def delete(self, artifact: str) -> None:
        self.ops.delete(artifact)

    def artifact_files(self, artifact: str) -> list[Path] | None:
        return _files_in(DirectoryStore(self._root), artifact) if self._root is not None else None

    def locations(self) -> tuple[Path | None, Path | None]:
        return self._root, self._staging


def _agent_locations(client: AgentClient) -> tuple[Path | None, Path | None]:
    """The agent's store and staging directory, where this host sees them (a directory store on a shared path)."""
    status = client.status()
    local = status.store.removeprefix("dir://") if "?" not in status.store else None
    root = Path(local) if local and local.startswith("/") and Path(local).is_dir() else None
    return root, Path(status.staging) if status.staging.startswith("/") else None


def _quiet(phase: str, fraction: float | None, detail: str) -> None:
    return None


def _handle(worker: Worker) -> Handle:
    return Handle(id=worker.id, name=worker.name, control_dir=Path(worker.control_dir), host_pid=worker.host_pid)


def _files_in(store: Store, artifact: str) -> list[Path] | None:
    if not isinstance(store, DirectoryStore):
        return None  # object storage: the floor's read term then comes from nothing local to read
    root = store.path(artifact)
    return [root / f.path for f in store.manifest(artifact).files]
