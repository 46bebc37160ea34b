"""The pipeline's results as the API's results: one conversion, used by LocalOperations and the agent alike."""

from __future__ import annotations

from thaw.api.models import (
    ArtifactSummary,
    Recovery,
    CanaryReport,
    Deleted,
    RestoreResult,
    SnapshotResult,
    VerifyResult,
    Worker,
)
from thaw.model import Manifest, Phase
from thaw.pipeline import Instance, Recovered, Restored, Snapshot


def worker(inst: Instance, *, busy: str | None = None) -> Worker:
    """A worker as the API shows it; ``busy`` is the id of the agent job holding it, if any."""
    alive = inst.alive()
    return Worker(
        id=inst.id, name=inst.name, state=inst.state, origin=inst.origin, artifact=inst.artifact,
        node=inst.node, host_pid=inst.host_pid, alive=alive, parked=inst.parked(),
        # a restored copy is "running" only once it passed its thaw hooks and canary (pipeline.restore)
        ready=alive and inst.state == "running",
        busy=busy, control_dir=str(inst.dir), created_at=inst.created_at,
    )


def recovery(done: Recovered) -> Recovery:
    return Recovery(operation=done.operation, worker=worker(done.instance), owner_pid=done.owner_pid, phase=done.phase,
                    notes=done.notes)


def snapshot_result(snap: Snapshot, *, leave_running: bool) -> SnapshotResult:
    m = snap.manifest
    written = snap.timings.seconds(Phase.DUMP) + snap.timings.seconds(Phase.PUBLISH)
    return SnapshotResult(artifact=m.name, artifact_id=m.artifact_id, digest=m.digest, bytes=m.size,
                          timings=snap.timings.flat(), write_gbps=_gbps(snap.store_stats.get("write_gbps"), m, written),
                          original="running" if leave_running else "stopped", worker_id=snap.instance.id,
                          worker=snap.instance.name)


def restore_result(restored: Restored) -> RestoreResult:
    m = restored.manifest
    checked = restored.canary_checked
    canary = CanaryReport(checked=checked, match=True if checked else None, expected=restored.canary_expected,
                          got=restored.canary_got, http_requests=len(restored.http_canary_got or []))
    fetched = restored.timings.seconds(Phase.FETCH)
    return RestoreResult(worker=worker(restored.instance), artifact=m.name, artifact_id=m.artifact_id, digest=m.digest,
                         bytes=m.size, timings=restored.timings.flat(), canary=canary,
                         read_gbps=_gbps(restored.store_stats.get("read_gbps"), m, fetched))


def verify_result(m: Manifest, seconds: float, *, expected_digest: bool, trust: str) -> VerifyResult:
    return VerifyResult(artifact=m.name, artifact_id=m.artifact_id, digest=m.digest, bytes=m.size, files=len(m.files),
                        seconds=seconds, read_gbps=m.size / seconds / 1e9 if seconds > 0 else None,
                        expected_digest=expected_digest, trust=trust)


def artifact_summary(m: Manifest) -> ArtifactSummary:
    return ArtifactSummary(name=m.name, artifact_id=m.artifact_id, digest=m.digest, created_at=m.created_at,
                           bytes=m.size, worker=m.worker.name, source_host=m.source.host, gpus=len(m.gpus),
                           has_canary=m.worker.canary is not None)


def deleted(m: Manifest) -> Deleted:
    return Deleted(artifact=m.name, artifact_id=m.artifact_id, digest=m.digest)


def _gbps(measured: float | None, m: Manifest, seconds: float) -> float | None:
    """The store's own figure, else the artifact's size over the phase that moved it."""
    return measured or (m.size / seconds / 1e9 if seconds > 0 else None)
