"""What the benchmark does to workers, in this process (``LocalOperations``) or through a node agent.

Both run the same pipeline; through the agent, each restore is timed from the request the
agent receives, as an operator's traffic would be (job queue, canary gate, audit log and
all). A failed operation raises a ThawError whose ``reason`` is the pipeline's own
(``canary_mismatch``, ``criu``, ``restore``, ...), also when it failed inside the agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from thaw import pipeline
from thaw.config import Settings
from thaw.errors import QuiesceTimeout, ThawError, WorkerError
from thaw.pipeline.phases import Progress
from thaw.store import Manifest, Store, open_store
from thaw.store.directory import DirectoryStore

if TYPE_CHECKING:
    from thaw.agent.client import AgentClient
    from thaw.agent.models import Job


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
    through: str

    def launch(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path) -> Handle: ...
    def wait_parked(self, worker: Handle, timeout: float) -> None: ...
    def release(self, worker: Handle) -> None: ...
    def snapshot(self, worker: Handle, artifact: str, *, ready_timeout: float,
                 progress: Progress | None = None) -> dict[str, float]: ...
    def restore(self, artifact: str, *, name: str, gpu: int | str | None,
                progress: Progress | None = None) -> Restored: ...
    def stop(self, worker: Handle) -> None: ...
    def alive(self, worker: Handle) -> bool: ...
    def manifest(self, artifact: str) -> Manifest: ...
    def delete(self, artifact: str) -> None: ...
    def artifact_files(self, artifact: str) -> list[Path] | None: ...
    def locations(self) -> tuple[Path | None, Path | None]: ...


class LocalOperations:
    """The pipeline, in this process."""

    through = "local"

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings.store_url)
        self._instances: dict[str, pipeline.Instance] = {}

    def launch(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path) -> Handle:
        inst = pipeline.launch(self.settings, argv, name=name, env=env, cwd=cwd)
        return self._track(inst)

    def wait_parked(self, worker: Handle, timeout: float) -> None:
        pipeline.wait_ready(self.settings, self._instances[worker.id], timeout)

    def release(self, worker: Handle) -> None:
        pipeline.release(self.settings, self._instances[worker.id])

    def snapshot(self, worker: Handle, artifact: str, *, ready_timeout: float,
                 progress: Progress | None = None) -> dict[str, float]:
        res = pipeline.snapshot(self.settings, worker.id, artifact, store=self.store, ready_timeout=ready_timeout,
                                progress=progress)
        return res.timings

    def restore(self, artifact: str, *, name: str, gpu: int | str | None,
                progress: Progress | None = None) -> Restored:
        res = pipeline.restore(self.settings, artifact, store=self.store, gpu_target=gpu, name=name,
                               progress=progress)
        return Restored(worker=self._track(res.instance), timings=res.timings, canary_checked=res.canary_checked)

    def stop(self, worker: Handle) -> None:
        pipeline.stop(self.settings, self._instances.pop(worker.id))

    def alive(self, worker: Handle) -> bool:
        inst = self._instances.get(worker.id)
        return inst is not None and inst.alive()

    def manifest(self, artifact: str) -> Manifest:
        return self.store.manifest(artifact)

    def delete(self, artifact: str) -> None:
        self.store.delete(artifact)

    def artifact_files(self, artifact: str) -> list[Path] | None:
        return _files_in(self.store, artifact)

    def locations(self) -> tuple[Path | None, Path | None]:
        root = self.store.root if isinstance(self.store, DirectoryStore) else None
        return root, self.settings.staging_dir

    def _track(self, inst: pipeline.Instance) -> Handle:
        self._instances[inst.id] = inst
        return Handle(id=inst.id, name=inst.name, control_dir=inst.dir, host_pid=inst.host_pid)


class AgentOperations:
    """The node agent's API: every operation is a request to it, as an operator's would be."""

    def __init__(self, client: AgentClient, *, job_timeout: float = 3600.0) -> None:
        self.client = client
        self.through = f"agent at {client.where}"
        self.job_timeout = job_timeout
        self._status = client.status()

    def launch(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path) -> Handle:
        return _handle(self.client.launch(name, argv, env=env, cwd=str(cwd)))

    def wait_parked(self, worker: Handle, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            w = self.client.worker(worker.id)
            if w.parked:
                return
            if not w.alive:
                raise WorkerError(f"worker {worker.id} exited before it reached its quiesce point",
                                  hint=f"its log: {w.control_dir}/worker.log")
            if time.monotonic() > deadline:
                raise QuiesceTimeout(f"worker {worker.id} did not reach its quiesce point within {timeout:.0f}s")
            time.sleep(0.02)

    def release(self, worker: Handle) -> None:
        self.client.release(worker.id)

    def snapshot(self, worker: Handle, artifact: str, *, ready_timeout: float,
                 progress: Progress | None = None) -> dict[str, float]:
        job = self._finish(self.client.snapshot(worker.id, artifact, ready_timeout=ready_timeout), progress)
        return dict(job["timings"])

    def restore(self, artifact: str, *, name: str, gpu: int | str | None,
                progress: Progress | None = None) -> Restored:
        result = self._finish(self.client.restore(artifact, name=name, gpu=gpu), progress)
        from thaw.agent.models import RestoreResult

        res = RestoreResult.model_validate(result)
        return Restored(worker=_handle(res.worker), timings=res.timings, canary_checked=res.canary.checked)

    def stop(self, worker: Handle) -> None:
        self.client.stop(worker.id)

    def alive(self, worker: Handle) -> bool:
        from thaw.agent.client import AgentError

        try:
            return self.client.worker(worker.id).alive
        except AgentError as exc:
            if exc.status == 404:
                return False
            return True  # the agent could not say (busy, restarting): the caller's deadline bounds the wait
        except ThawError:
            return True

    def manifest(self, artifact: str) -> Manifest:
        return Manifest.model_validate(self.client.artifact(artifact))

    def delete(self, artifact: str) -> None:
        self.client.delete(artifact)

    def artifact_files(self, artifact: str) -> list[Path] | None:
        root, _ = self.locations()
        return _files_in(DirectoryStore(root), artifact) if root is not None else None

    def locations(self) -> tuple[Path | None, Path | None]:
        store = self._status.store
        local = store.removeprefix("dir://") if "?" not in store else None
        root = Path(local) if local and local.startswith("/") and Path(local).is_dir() else None
        return root, Path(self._status.staging) if self._status.staging.startswith("/") else None

    def _finish(self, job: Job, progress: Progress | None) -> dict[str, Any]:
        deadline = time.monotonic() + self.job_timeout
        while not job.state.finished:
            if progress is not None and job.progress is not None:
                progress(job.progress.phase, job.progress.fraction, job.progress.detail)
            if time.monotonic() > deadline:
                raise ThawError(f"agent job {job.id} did not finish within {self.job_timeout:.0f}s")
            job = self.client.job(job.id, wait=2.0)
        if job.state.value == "failed":
            error = ThawError(job.error.message if job.error else f"agent job {job.id} failed",
                              hint=job.error.hint if job.error else None)
            error.reason = job.error.reason if job.error else "error"  # the pipeline's reason, e.g. canary_mismatch
            raise error
        return job.result or {}


def _handle(worker: Any) -> Handle:
    return Handle(id=worker.id, name=worker.name, control_dir=Path(worker.control_dir), host_pid=worker.host_pid)


def _files_in(store: Store, artifact: str) -> list[Path] | None:
    if not isinstance(store, DirectoryStore):
        return None  # object storage: the floor's read term then comes from nothing local to read
    root = store.path(artifact)
    return [root / f.path for f in store.manifest(artifact).files]
