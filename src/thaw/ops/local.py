"""``LocalOperations``: the pipeline, run in this process (``thaw --local``, or no agent on this node)."""

from __future__ import annotations

import time
from pathlib import Path

from thaw import pipeline
from thaw.api.models import ArtifactSummary, Deleted, Recovery, RestoreResult, SnapshotResult, VerifyResult, Worker
from thaw.config import Settings
from thaw.model import GpuTarget, Manifest, check_name
from thaw.ops import views
from thaw.ops.base import Progress
from thaw.store import Store, open_store


class LocalOperations:
    """Every operation through the pipeline here; results as the agent gives them (thaw.ops.views)."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self._store = store
        self.where = "this process"

    @property
    def store(self) -> Store:
        # opened on first use: `thaw ps` and `thaw stop` need no store (and a bad --store fails only where used)
        if self._store is None:
            self._store = open_store(self.settings.store_url)
        return self._store

    # ---- workers ----
    def launch(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path) -> Worker:
        return views.worker(pipeline.launch(self.settings, argv, name=name, env=env, cwd=cwd))

    def wait_ready(self, worker: str, timeout: float) -> Worker:
        inst = pipeline.find(self.settings, worker)
        pipeline.wait_ready(self.settings, inst, timeout)
        return views.worker(inst)

    def workers(self, *, include_gone: bool = False) -> list[Worker]:
        return [views.worker(i) for i in pipeline.list_instances(self.settings) if include_gone or i.alive()]

    def release(self, worker: str) -> Worker:
        return views.worker(pipeline.release(self.settings, worker))

    def stop(self, worker: str) -> Worker:
        return views.worker(pipeline.stop(self.settings, pipeline.find(self.settings, worker, alive=False)))

    def recover(self) -> list[Recovery]:
        return [views.recovery(r) for r in pipeline.recover(self.settings, self._store)]

    # ---- snapshot and restore ----
    def snapshot(self, worker: str, artifact: str, *, leave_running: bool, ready_timeout: float,
                 progress: Progress) -> SnapshotResult:
        snap = pipeline.snapshot(self.settings, worker, artifact, store=self.store, leave_running=leave_running,
                                 ready_timeout=ready_timeout, progress=progress)
        return views.snapshot_result(snap, leave_running=leave_running)

    def restore(self, artifact: str, *, name: str | None, gpu: GpuTarget | None, verify_canary: bool,
                progress: Progress) -> RestoreResult:
        restored = pipeline.restore(self.settings, artifact, store=self.store, gpu_target=gpu, name=name,
                                    verify_canary=verify_canary, progress=progress)
        return views.restore_result(restored)

    # ---- artifacts ----
    def artifacts(self) -> list[ArtifactSummary]:
        return [views.artifact_summary(m) for m in self.store.list()]

    def manifest(self, artifact: str) -> Manifest:
        return self.store.manifest(check_name(artifact))

    def verify(self, artifact: str, *, progress: Progress) -> VerifyResult:
        check_name(artifact)
        progress("verify", None, f"reading every chunk of {artifact}")
        t0 = time.perf_counter()
        m = self.store.verify(artifact)
        return views.verify_result(m, time.perf_counter() - t0)

    def delete(self, artifact: str) -> Deleted:
        m = self.store.manifest(check_name(artifact))
        self.store.delete(artifact)
        return views.deleted(m)

    def close(self) -> None:
        return None
