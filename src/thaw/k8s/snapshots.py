"""Reconciling a WorkerSnapshot: find the pod's node and agent, start the agent's snapshot job, follow it.

``reconcile`` is called every poll interval until the phase is Ready or Failed; each call
does one step and returns a ``Step`` (status.py)::

    Pending ──(pod bound, agent found, job started)──▶ Snapshotting ──(job succeeded)──▶ Ready
       │  pod missing/unbound: wait (until timeoutSeconds)       │ job failed / lost / timeout
       │  agent unreachable or busy: retry with back-off          ▼
       └──────────────────────────────────────────────────────▶ Failed

The agent guarantees that a failed snapshot publishes nothing and leaves the worker
running (docs/architecture.md), so Failed never needs cleaning up. ``finalize`` runs when
the object is deleted and removes the artifact unless ``retention: Retain``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from thaw.errors import ArtifactNotFound, BusyError, ThawError
from thaw.k8s import agents
from thaw.k8s.agents import Connect, Job
from thaw.k8s.cluster import Cluster, agent_for
from thaw.k8s.resources import (
    short_name,
    COND_AGENT,
    COND_READY,
    PENDING,
    READY,
    SNAPSHOTTING,
    TERMINAL,
    WORKER,
    pod_ref,
)
from thaw.k8s.status import (
    NORMAL,
    Step,
    camel,
    failed,
    flapped,
    human_duration,
    human_size,
    now_iso,
    parse_iso,
    pending,
    retry_later,
    set_condition,
    unreachable,
)


@dataclass(frozen=True)
class SnapshotSpec:
    namespace: str
    name: str
    pod: str
    worker: str | None
    artifact: str
    leave_running: bool
    retention: str
    timeout: float
    canary_http: tuple[dict[str, Any], ...] = ()  # requests the original answers; every restored copy must alike

    @classmethod
    def of(cls, body: dict[str, Any]) -> SnapshotSpec:
        meta, spec = body["metadata"], body.get("spec") or {}
        return cls(namespace=meta["namespace"], name=meta["name"], pod=spec["podName"], worker=spec.get("worker"),
                   artifact=spec.get("artifact") or default_artifact(meta["namespace"], meta["name"]),
                   leave_running=bool(spec.get("leaveRunning", True)), retention=spec.get("retention", "Delete"),
                   timeout=float(spec.get("timeoutSeconds", 1800)),
                   canary_http=tuple(spec.get("canaryHttp") or ()))


def default_artifact(namespace: str, name: str) -> str:
    """``<namespace>.<name>``, shortened with a hash suffix when longer than an artifact name may be (128)."""
    return short_name(f"{namespace}.{name}", 128)


def reconcile(body: dict[str, Any], cluster: Cluster, connect: Connect, *, retry: int = 0,
              now: datetime | None = None) -> Step:
    """One step towards Ready (or Failed) for the WorkerSnapshot ``body``."""
    now = now or datetime.now(UTC)
    status = body.get("status") or {}
    phase = status.get("phase") or PENDING
    if phase in TERMINAL:
        return Step()
    spec = SnapshotSpec.of(body)
    if phase == SNAPSHOTTING and status.get("agentJob"):
        return _follow(spec, status, cluster, connect, retry, now)
    return _start(spec, body, status, cluster, connect, retry, now)


def finalize(body: dict[str, Any], cluster: Cluster, connect: Connect, *, retry: int = 0) -> Step:
    """Before a WorkerSnapshot goes: delete its artifact unless retention says Retain.

    A snapshot still running is waited for (its artifact would otherwise appear after the
    object is gone, owned by nobody). Raises nothing: a Step with ``retry_in`` asks to be called again.
    """
    spec = SnapshotSpec.of(body)
    status = body.get("status") or {}
    phase = status.get("phase") or PENDING
    name = (status.get("artifact") or {}).get("name") or spec.artifact
    step = Step()
    if spec.retention == "Retain":
        if phase == READY:
            step.event(NORMAL, "ArtifactRetained", f"artifact {name} is kept (retention: Retain)")
        return step
    if phase == SNAPSHOTTING and status.get("agentJob"):
        try:
            job = Job.from_dict(agent_for(cluster, connect, status.get("node")).job(status["agentJob"]))
        except Exception as exc:
            if not agents.is_temporary(exc):
                raise
            return retry_later(step, f"waiting for the agent to finish job {status['agentJob']} before deleting: {exc}", retry)
        if not job.done:
            return retry_later(step, f"snapshot job {job.id} still running; its artifact is deleted once it finishes", retry)
        if not job.succeeded:
            return step
    elif phase != READY:
        return step  # nothing was published: a failed or never started snapshot leaves no artifact
    try:
        agent_for(cluster, connect, status.get("node"), any_node=True).delete_artifact(name)
    except ArtifactNotFound:
        return step.event(NORMAL, "ArtifactDeleted", f"artifact {name} was already gone")
    except Exception as exc:
        if not agents.is_temporary(exc):
            raise
        return retry_later(step, f"cannot delete artifact {name} yet: {exc}", retry)
    return step.event(NORMAL, "ArtifactDeleted", f"deleted artifact {name}")


# --- the steps ----------------------------------------------------------------------------------------------

def _start(spec: SnapshotSpec, body: dict[str, Any], status: dict[str, Any], cluster: Cluster, connect: Connect,
           retry: int, now: datetime) -> Step:
    conds = status.get("conditions")
    created = parse_iso(body["metadata"].get("creationTimestamp")) or now
    if (now - created).total_seconds() > spec.timeout:
        return failed(conds, "Timeout", f"the snapshot could not start within {spec.timeout:.0f}s: "
                     f"{status.get('message') or 'no reason recorded'}", now)
    pod = cluster.get_pod(spec.namespace, spec.pod)
    waiting = None
    if pod is None:
        waiting = ("PodNotFound", f"pod {spec.pod} does not exist (yet)")
    elif (pod.get("metadata") or {}).get("deletionTimestamp"):
        return failed(conds, "PodDeleted", f"pod {spec.pod} is being deleted", now)
    elif not (pod.get("spec") or {}).get("nodeName"):
        waiting = ("PodNotScheduled", f"pod {spec.pod} is not bound to a node yet")
    elif (pod.get("status") or {}).get("phase") != "Running":
        waiting = ("PodNotRunning", f"pod {spec.pod} is {(pod.get('status') or {}).get('phase') or 'not running'}")
    if waiting:
        return pending(conds, *waiting, now)
    node = pod["spec"]["nodeName"]
    worker = spec.worker or ((pod.get("metadata") or {}).get("annotations") or {}).get(WORKER) or spec.pod
    step = Step()
    try:
        # the object's uid as idempotency key: a retry after a lost answer gets the job the first call started
        job_id = agent_for(cluster, connect, node).snapshot(worker, spec.artifact, leave_running=spec.leave_running,
                                                            canary_http=list(spec.canary_http) or None,
                                                            pod=pod_ref(pod), key=body["metadata"].get("uid"))
    except BusyError as exc:  # another operation holds the worker (or the artifact name): wait for it
        return retry_later(pending(conds, "AgentBusy", f"the agent on {node} is busy: {exc}", now), str(exc), retry)
    except Exception as exc:
        if agents.is_temporary(exc):
            return unreachable(step, conds, node, exc, retry, now, phase=PENDING)
        if isinstance(exc, ThawError):
            return failed(conds, "AgentRejected", f"the agent on {node} refused to snapshot worker {worker}: {exc}",
                         now, step)
        raise
    if flapped(conds, COND_AGENT):
        step.event(NORMAL, "AgentReachable", f"the agent on {node} answers again")
    conds = set_condition(conds, COND_AGENT, True, "Reachable", f"agent on {node}", now=now)
    conds = set_condition(conds, COND_READY, False, "Snapshotting", f"job {job_id} on {node}", now=now)
    step.status = {"phase": SNAPSHOTTING, "node": node, "worker": worker, "agentJob": job_id,
                   "startedAt": now_iso(now), "message": f"snapshotting worker {worker} into {spec.artifact}",
                   "conditions": conds}
    return step.event(NORMAL, "SnapshotStarted",
                      f"snapshotting worker {worker} of pod {spec.pod} on {node} into {spec.artifact} (job {job_id})")


def _follow(spec: SnapshotSpec, status: dict[str, Any], cluster: Cluster, connect: Connect, retry: int,
            now: datetime) -> Step:
    conds, node, job_id = status.get("conditions"), status.get("node"), status["agentJob"]
    step = Step()
    try:
        agent = agent_for(cluster, connect, node)
        job = Job.from_dict(agent.job(job_id))
    except Exception as exc:
        if agents.is_temporary(exc):
            return unreachable(step, conds, node, exc, retry, now)
        if isinstance(exc, ThawError):
            return failed(conds, "JobLost", f"the agent on {node} no longer knows job {job_id}: {exc}", now, step)
        raise
    started = parse_iso(status.get("startedAt")) or now
    took = (now - started).total_seconds()
    if job.succeeded:
        name = str(job.result.get("artifact") or spec.artifact)
        try:  # the job's result has size and digest; the GPU model and canary are in the manifest
            manifest = agent.inspect_artifact(name)
        except Exception as exc:
            if agents.is_temporary(exc):
                return unreachable(step, conds, node, exc, retry, now)
            if isinstance(exc, ThawError):
                return failed(conds, "ArtifactMissing", f"job {job_id} published {name}, but the store cannot show "
                              f"it: {exc}", now, step, took=took)
            raise
        return _ready(spec, status, job, manifest, took, now)
    if job.state == agents.FAILED:
        reason = camel(job.error_reason or "error")
        return failed(conds, f"Snapshot{reason}" if not reason.startswith("Snapshot") else reason,
                     f"snapshot job {job_id} on {node} failed: {job.error_message or 'no reason given'} "
                     "(the worker was left running)", now, step, took=took)
    if took > spec.timeout:
        return failed(conds, "Timeout", f"snapshot job {job_id} on {node} still {job.state} after {took:.0f}s "
                     f"(timeoutSeconds {spec.timeout:.0f})", now, step, took=took)
    if flapped(conds, COND_AGENT):
        step.event(NORMAL, "AgentReachable", f"the agent on {node} answers again")
        conds = set_condition(conds, COND_AGENT, True, "Reachable", f"agent on {node}", now=now)
        step.status["conditions"] = conds
    if job.progress and job.progress != status.get("progress"):
        step.status["progress"] = job.progress
    return step


def _ready(spec: SnapshotSpec, status: dict[str, Any], job: Job, manifest: dict[str, Any], took: float,
           now: datetime) -> Step:
    art = artifact_record(job.result, manifest, spec.artifact)
    conds = set_condition(status.get("conditions"), COND_AGENT, True, "Reachable", f"agent on {status.get('node')}", now=now)
    conds = set_condition(conds, COND_READY, True, "ArtifactPublished", f"artifact {art['name']} ({art['size']})", now=now)
    step = Step(status={"phase": READY, "artifact": art, "timings": job_timings(job.result),
                        "completedAt": now_iso(now), "duration": human_duration(took), "progress": None,
                        "message": f"artifact {art['name']} published", "conditions": conds})
    gpu = f" on {art['gpuCount']} x {art['gpuProduct']}" if art.get("gpuProduct") else ""
    return step.event(NORMAL, "SnapshotReady", f"artifact {art['name']} ({art['size']}, {art.get('digest', '?')}){gpu} "
                      f"published in {human_duration(took)}")


def artifact_record(result: dict[str, Any], manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """``status.artifact`` from a finished snapshot job's result and the artifact's manifest."""
    record: dict[str, Any] = {"name": str(result.get("artifact") or manifest.get("name") or name)}
    artifact_id = result.get("artifact_id") or manifest.get("artifact_id")
    if artifact_id:
        record["id"] = str(artifact_id)
    digest, size = result.get("digest"), result.get("bytes")
    if digest is None or size is None:
        parsed = _parse_manifest(manifest)
        if parsed is not None:
            digest = digest if digest is not None else parsed.digest
            size = size if size is not None else parsed.size
    if digest:
        record["digest"] = str(digest)
    record["sizeBytes"] = int(size or 0)
    record["size"] = human_size(record["sizeBytes"])
    gpus = manifest.get("gpus") or []
    record["gpuCount"] = len(gpus)
    if gpus:
        record["gpuProduct"] = str(gpus[0].get("name") or gpus[0].get("product") or "")
        used = [g.get("used_bytes") for g in gpus if isinstance(g.get("used_bytes"), int)]
        if used:  # what the restore's GPU must have free (NVML's count at snapshot time)
            record["gpuMemoryBytes"] = max(used)
    record["hasCanary"] = (manifest.get("worker") or {}).get("canary") is not None
    if result.get("store") or (manifest.get("source") or {}).get("store"):
        record["store"] = str(result.get("store") or manifest["source"]["store"])
    return record


def job_timings(result: dict[str, Any]) -> dict[str, float]:
    return {str(k): round(float(v), 4) for k, v in (result.get("timings") or {}).items() if isinstance(v, (int, float))}


def _parse_manifest(raw: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from thaw.store.manifest import Manifest

    try:
        return Manifest.model_validate(raw)
    except ValidationError:  # a manifest of another schema: the job's own digest and size are used instead
        return None
