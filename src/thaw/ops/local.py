"""``LocalOperations``: the pipeline, run in this process (``thaw --local``, or no agent on this node)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from thaw import pipeline
from thaw.pipeline import cleanup
from thaw.api.models import (
    ArtifactSummary,
    Deleted,
    Inspection,
    Recovery,
    RestoreResult,
    SnapshotResult,
    Swept,
    VerifyResult,
    Worker,
)
from thaw.config import Settings
from thaw.errors import ArtifactNotFound, ThawError
from thaw.listen import ParkAtListen
from thaw.model import GpuTarget, check_name
from thaw.model.manifest import HttpCanaryRequest
from thaw.ops import views
from thaw.ops.base import Progress
from thaw.sandbox.pod import Anchor
from thaw.store import Store, store_for

log = logging.getLogger("thaw")


class LocalOperations:
    """Every operation through the pipeline here; results as the agent gives them (thaw.ops.views)."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self._store = store
        self.where = "this process"
        self.store_name = settings.store_url

    @property
    def store(self) -> Store:
        # opened on first use: `thaw ps` and `thaw stop` need no store (and a bad --store fails only where used)
        if self._store is None:
            self._store = store_for(self.settings)
            try:  # what crashed operations left in its staging and the node's (their owners are dead)
                cleanup.sweep(self.settings, self._store)
            except (ThawError, OSError) as exc:  # a clean-up that fails must not fail the command: `thaw gc` says more
                log.warning("could not sweep staging debris: %s", exc)
        return self._store

    # ---- workers ----
    def launch(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path,
               park: ParkAtListen | None = None) -> Worker:
        return views.worker(pipeline.launch(self.settings, argv, name=name, env=env, cwd=cwd, park=park))

    def wait_ready(self, worker: str, timeout: float) -> Worker:
        inst = pipeline.find(self.settings, worker)
        pipeline.wait_ready(self.settings, inst, timeout)
        return views.worker(inst)

    def workers(self, *, include_gone: bool = False) -> list[Worker]:
        return [views.worker(i) for i in pipeline.list_instances(self.settings) if include_gone or i.alive()]

    def worker(self, ref: str) -> Worker:
        return views.worker(pipeline.find(self.settings, ref, alive=False))

    def release(self, worker: str) -> Worker:
        return views.worker(pipeline.release(self.settings, worker))

    def stop(self, worker: str) -> Worker:
        return views.worker(pipeline.stop(self.settings, pipeline.find(self.settings, worker, alive=False)))

    def recover(self) -> list[Recovery]:
        return [views.recovery(r) for r in pipeline.recover(self.settings, self._store)]

    def sweep(self, older_than_s: float | None) -> Swept:
        if self._store is None:  # opened without the implicit sweep of `store`: this one counts what it removes
            self._store = store_for(self.settings)
        swept = cleanup.sweep(self.settings, self._store, older_than_s=older_than_s)
        return Swept(staging=swept.staging, store_entries=swept.store_entries, instances=swept.instances)

    # ---- snapshot and restore ----
    def snapshot(self, worker: str, artifact: str, *, leave_running: bool, ready_timeout: float,
                 canary_http: list[HttpCanaryRequest], progress: Progress) -> SnapshotResult:
        snap = pipeline.snapshot(self.settings, worker, artifact, store=self.store, leave_running=leave_running,
                                 ready_timeout=ready_timeout, canary_http=canary_http, progress=progress)
        return views.snapshot_result(snap, leave_running=leave_running)

    def restore(self, artifact: str, *, name: str | None, gpu: GpuTarget | None, verify_canary: bool,
                digest: str | None, progress: Progress, into: Anchor | None = None) -> RestoreResult:
        """``into`` (the agent's, for a pod): restore into that pod entrypoint's namespaces, cgroup and root."""
        restored = pipeline.restore(self.settings, artifact, store=self.store, gpu_target=gpu, name=name,
                                    verify_canary=verify_canary, expected_digest=digest, progress=progress,
                                    into=into)
        return views.restore_result(restored)

    # ---- artifacts ----
    def artifacts(self) -> list[ArtifactSummary]:
        return [views.artifact_summary(m) for m in self.store.list()]

    def inspect(self, artifact: str) -> Inspection:
        m = self.store.check_complete(check_name(artifact))
        return Inspection(manifest=m, trust=self.store.trust.describe(m))

    def verify(self, artifact: str, *, digest: str | None, progress: Progress) -> VerifyResult:
        check_name(artifact)
        progress("verify", None, f"reading every chunk of {artifact}")
        t0 = time.perf_counter()
        m = self.store.verify(artifact, expected_digest=digest)
        return views.verify_result(m, time.perf_counter() - t0, expected_digest=digest is not None,
                                   trust=self.store.trust.describe(m))

    def delete(self, artifact: str) -> Deleted:
        check_name(artifact)
        try:
            m = self.store.manifest(artifact)
        except ArtifactNotFound:
            m = None  # perhaps a leftover directory without a manifest: the store decides
        what = self.store.delete(artifact)
        if m is None or what == "leftover":
            return Deleted(artifact=artifact, leftover=what == "leftover")
        return views.deleted(m)

    def close(self) -> None:
        return None
