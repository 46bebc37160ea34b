"""Reconciling a WorkerRestore, and the pods that ask for one (the autoscaler path).

``reconcile`` is called every poll interval until the phase is Ready or Failed::

    Pending ──(snapshot Ready, node + GPU chosen, restore job started)──▶ Restoring
       │ snapshot missing/failed · no node fits · timeout                 │ job succeeded: the agent
       ▼                                                                  │ verified the canary
    Failed ◀──(job failed: canary mismatch, restore error, job lost, timeout)──┴──▶ Ready

The agent runs the canary as part of the restore job and fails the job (killing the
copy) when the outputs differ, so Ready is only ever reached through a job that passed
it: a worker that failed its canary is never marked ready.

**Pods.** A pod annotated ``thaw.dev/restore-from: <snapshot>`` gets a WorkerRestore of
its own (owned by the pod, so it goes with it) pinned to the pod's node. Its outcome is
written back to the pod: annotation ``thaw.dev/restore-state`` (Restoring → Restored, or
ColdStart when there is no valid snapshot or the restore failed) and the pod condition
``thaw.dev/restored``, which a readiness gate turns into "the pod may not be Ready
before the restored worker passed its canary". ColdStart sets the condition True too:
thaw no longer holds the pod back and its own readiness probe decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from thaw.errors import BusyError, ThawError
from thaw.k8s import agents
from thaw.k8s.agents import Connect, Job
from thaw.k8s.cluster import Cluster
from thaw.k8s.placement import GpuNeed, NoPlacement, choose_gpu, choose_node
from thaw.k8s.resources import (
    short_name,
    API_VERSION,
    COLD_START,
    COND_AGENT,
    COND_CANARY,
    COND_READY,
    COND_SCHEDULED,
    FAILED,
    POD_CONDITION,
    READY,
    RESTORE_FROM,
    RESTORE_KIND,
    RESTORE_OBJECT,
    RESTORE_REASON,
    RESTORE_STATE,
    RESTORED,
    RESTORED_WORKER,
    RESTORING,
    RESTORING_PHASE,
    TERMINAL,
    PENDING,
    pod_ref,
)
from thaw.k8s.status import (
    NORMAL,
    WARNING,
    PodPatch,
    Step,
    camel,
    changed,
    failed,
    flapped,
    human_duration,
    now_iso,
    parse_iso,
    pending,
    retry_later,
    set_condition,
    unreachable,
)

#: a pod on a node whose agent is not up yet waits this long before starting cold: when an autoscaler adds
#: a node, the pod and the agent DaemonSet's pod arrive together, and the agent needs a few seconds to start
AGENT_GRACE_S = 120.0

#: canary outcomes (status.canary)
PASSED, CANARY_FAILED, NOT_RECORDED = "Passed", "Failed", "NotRecorded"


@dataclass(frozen=True)
class RestoreSpec:
    namespace: str
    name: str
    snapshot: str
    node: str | None
    gpu: str | None
    worker: str
    pod: str | None
    timeout: float

    @classmethod
    def of(cls, body: dict[str, Any]) -> RestoreSpec:
        meta, spec = body["metadata"], body.get("spec") or {}
        target = spec.get("target") or {}
        return cls(namespace=meta["namespace"], name=meta["name"], snapshot=spec["snapshotName"],
                   node=target.get("nodeName") or None, gpu=target.get("gpu") or None,
                   worker=target.get("workerName") or short_name(meta["name"], 128), pod=target.get("podName") or None,
                   timeout=float(spec.get("timeoutSeconds", 900)))


def reconcile(body: dict[str, Any], cluster: Cluster, connect: Connect, *, retry: int = 0,
              now: datetime | None = None) -> Step:
    """One step towards Ready (or Failed) for the WorkerRestore ``body``."""
    now = now or datetime.now(UTC)
    status = body.get("status") or {}
    phase = status.get("phase")
    if phase in TERMINAL:
        return Step()
    spec = RestoreSpec.of(body)
    if phase == RESTORING_PHASE and status.get("agentJob"):
        return _follow(spec, status, cluster, connect, retry, now)
    return _start(spec, body, status, cluster, connect, retry, now)


# --- the steps ----------------------------------------------------------------------------------------------

def _start(spec: RestoreSpec, body: dict[str, Any], status: dict[str, Any], cluster: Cluster, connect: Connect,
           retry: int, now: datetime) -> Step:
    conds = status.get("conditions")
    created = parse_iso(body["metadata"].get("creationTimestamp")) or now
    if (now - created).total_seconds() > spec.timeout:
        return _give_up(spec, conds, "Timeout", f"the restore could not start within {spec.timeout:.0f}s: "
                        f"{status.get('message') or 'no reason recorded'}", now)
    snap = cluster.get_snapshot(spec.namespace, spec.snapshot)
    if snap is None:
        return _give_up(spec, conds, "SnapshotNotFound", f"WorkerSnapshot {spec.snapshot} does not exist", now)
    snap_status = snap.get("status") or {}
    art = snap_status.get("artifact") or {}
    if snap_status.get("phase") != READY or not art.get("name"):
        why = f"WorkerSnapshot {spec.snapshot} is {snap_status.get('phase') or 'Pending'}"
        if snap_status.get("phase") == FAILED or spec.pod:  # pods never wait: they start cold instead
            return _give_up(spec, conds, "SnapshotNotReady", why, now)
        return pending(conds, "SnapshotNotReady", f"{why}; waiting for it", now)

    need = GpuNeed.of(art.get("gpuProduct"), art.get("gpuCount"), art.get("gpuMemoryBytes"))
    pinned, into = spec.node, None
    if spec.pod:
        pod = cluster.get_pod(spec.namespace, spec.pod)
        pinned = pinned or ((pod or {}).get("spec") or {}).get("nodeName")
        if not pinned:
            return _give_up(spec, conds, "PodNotScheduled", f"pod {spec.pod} is gone or not bound to a node", now)
        into = pod_ref(pod or {})  # a pod running thaw's entrypoint: the worker is restored into it
        if into and not container_started(pod or {}):
            return _waiting(spec, conds, "PodStarting", f"pod {spec.pod}'s container (thaw's entrypoint) has not "
                            f"started yet on {pinned}", created, retry, now)
    nodes = cluster.list_nodes()
    urls = cluster.agent_urls(nodes)
    step = Step()
    try:
        fit = choose_node(nodes, cluster.list_pods(pinned), need, lambda n: n in urls, pinned=pinned,
                          exclude_pod=f"{spec.namespace}/{spec.pod}" if spec.pod else None)
        agent = connect(urls[fit.node])
        # into a pod: the GPU is the one the device plugin gave the pod, which its node's agent looks up
        gpu = None if into else choose_gpu(agent.node_info(), need, wanted=spec.gpu)
        # pinned to the digest the snapshot recorded: a replaced or altered artifact is refused by the agent;
        # the object's uid as idempotency key: a retry after a lost answer gets the job the first call started
        job_id = agent.restore(art["name"], gpu=gpu, name=spec.worker, digest=art.get("digest") or None, pod=into,
                               key=body["metadata"].get("uid"))
    except NoPlacement as exc:
        if spec.pod and pinned not in urls:
            return _no_agent(spec, conds, pinned, f"no ready thaw agent on {pinned} (agent DaemonSet pod missing or "
                             "not Ready)", created, retry, now)
        if spec.pod:
            return _give_up(spec, conds, "NoPlacement", str(exc), now)
        step = pending(set_condition(conds, COND_SCHEDULED, False, "Unschedulable", str(exc), now=now),
                       "Unschedulable", str(exc), now)
        return retry_later(step, str(exc), retry)
    except BusyError as exc:
        return retry_later(pending(conds, "AgentBusy", f"the agent is busy: {exc}", now), str(exc), retry)
    except Exception as exc:
        if agents.is_temporary(exc):
            if spec.pod:  # an agent that does not answer is no better than none: the same deadline
                return _no_agent(spec, conds, pinned, f"the thaw agent on {pinned} does not answer: {exc}", created,
                                 retry, now)
            return unreachable(step, conds, pinned, exc, retry, now, phase=PENDING)
        if isinstance(exc, ThawError):
            return _give_up(spec, conds, "AgentRejected", f"the agent refused the restore: {exc}", now)
        raise
    if flapped(conds, COND_AGENT):
        step.event(NORMAL, "AgentReachable", f"the agent on {fit.node} answers again")
    conds = set_condition(conds, COND_SCHEDULED, True, "NodeChosen", f"{fit.node}: {fit.why}", now=now)
    conds = set_condition(conds, COND_AGENT, True, "Reachable", f"agent on {fit.node}", now=now)
    conds = set_condition(conds, COND_READY, False, "Restoring", f"job {job_id} on {fit.node}", now=now)
    # None, not "": a merge patch deletes the field (the API server refuses an empty string here)
    step.status = {"phase": RESTORING_PHASE, "node": fit.node, "gpu": gpu, "worker": spec.worker,
                   "artifact": art["name"], "agentJob": job_id, "startedAt": now_iso(now), "conditions": conds,
                   "message": f"restoring {art['name']} on {fit.node}"}
    on_gpu = f" onto GPU {gpu}" if gpu else ""
    step.event(NORMAL, "RestoreStarted", f"restoring {art['name']} as worker {spec.worker} on {fit.node}{on_gpu} "
               f"(job {job_id})")
    if spec.pod:
        step.pod = _pod_patch(spec, RESTORING, f"restoring {art['name']} on {fit.node}", False, now)
    return step


def _follow(spec: RestoreSpec, status: dict[str, Any], cluster: Cluster, connect: Connect, retry: int,
            now: datetime) -> Step:
    from thaw.k8s.cluster import agent_for

    conds, node, job_id = status.get("conditions"), status.get("node"), status["agentJob"]
    step = Step()
    try:
        job = Job.from_dict(agent_for(cluster, connect, node).job(job_id))
    except Exception as exc:
        if agents.is_temporary(exc):
            return unreachable(step, conds, node, exc, retry, now)
        if isinstance(exc, ThawError):
            return _give_up(spec, conds, "JobLost", f"the agent on {node} no longer knows job {job_id}: {exc}", now)
        raise
    took = (now - (parse_iso(status.get("startedAt")) or now)).total_seconds()
    if job.succeeded:
        canary = canary_outcome(job.result)
        if canary == CANARY_FAILED:  # a job that "succeeded" with a failed canary is still a failed canary
            return _canary_failed(spec, conds, node, job, took, now)
        return _ready(spec, status, job, canary, took, now)
    if job.state == agents.FAILED:
        if job.error_reason in ("canary_mismatch", "CanaryMismatch"):
            return _canary_failed(spec, conds, node, job, took, now)
        reason = camel(job.error_reason or "error")
        return _give_up(spec, conds, reason if reason.startswith("Restore") else f"Restore{reason}",
                        f"restore job {job_id} on {node} failed: {job.error_message or 'no reason given'}", now, took=took)
    if took > spec.timeout:
        return _give_up(spec, conds, "Timeout", f"restore job {job_id} on {node} still {job.state} after {took:.0f}s "
                        f"(timeoutSeconds {spec.timeout:.0f})", now, took=took)
    if flapped(conds, COND_AGENT):
        step.status["conditions"] = set_condition(conds, COND_AGENT, True, "Reachable", f"agent on {node}", now=now)
        step.event(NORMAL, "AgentReachable", f"the agent on {node} answers again")
    if job.progress and job.progress != status.get("progress"):
        step.status["progress"] = job.progress
    return step


def container_started(pod: dict[str, Any]) -> bool:
    """Every container of the pod is running: its entrypoint is there for the agent to find."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all("running" in (s.get("state") or {}) for s in statuses)


def _waiting(spec: RestoreSpec, conds: Any, reason: str, why: str, created: datetime, retry: int,
             now: datetime) -> Step:
    """Pending for ``why`` until AGENT_GRACE_S after the restore's creation, then a cold start."""
    waited = (now - created).total_seconds()
    if waited >= AGENT_GRACE_S:
        return _give_up(spec, conds, reason, f"{why}; gave up after {waited:.0f}s", now)
    return retry_later(pending(conds, reason, why, now), why, retry)


def _no_agent(spec: RestoreSpec, conds: Any, node: str | None, why: str, created: datetime, retry: int,
              now: datetime) -> Step:
    """A pod whose node has no agent that answers: wait up to AGENT_GRACE_S from the restore's creation
    (an autoscaled node's agent pod starts with it), saying why at every retry; then start cold."""
    waited = (now - created).total_seconds()
    if waited >= AGENT_GRACE_S:
        return _give_up(spec, conds, "AgentUnreachable", f"{why}; gave up after {waited:.0f}s "
                        f"(the deadline is {AGENT_GRACE_S:.0f}s)", now)
    message = (f"{why}; retry {retry + 1}, starting cold in {AGENT_GRACE_S - waited:.0f}s unless it answers "
               f"(is the thaw-agent DaemonSet's pod on {node} Ready? kubectl -n thaw-system get pods -o wide)")
    new = set_condition(conds, COND_AGENT, False, "AgentUnreachable", why, now=now)
    step = pending(new, "AgentNotReady", message, now)
    step.status["node"] = node
    if changed(conds, new, COND_AGENT):
        step.event(WARNING, "AgentUnreachable", message)
    return retry_later(step, message, retry)


def _ready(spec: RestoreSpec, status: dict[str, Any], job: Job, canary: str, took: float, now: datetime) -> Step:
    restored = job.result.get("worker")
    worker = str((restored.get("name") if isinstance(restored, dict) else restored) or spec.worker)
    node = status.get("node")
    conds = set_condition(status.get("conditions"), COND_AGENT, True, "Reachable", f"agent on {node}", now=now)
    if canary == PASSED:
        conds = set_condition(conds, COND_CANARY, True, "Matched", "the restored worker reproduced its canary", now=now)
    else:
        conds = set_condition(conds, COND_CANARY, None, "NotRecorded", "the snapshot recorded no canary to check", now=now)
    conds = set_condition(conds, COND_READY, True, "Restored", f"worker {worker} runs on {node}", now=now)
    step = Step(status={"phase": READY, "worker": worker, "canary": canary, "completedAt": now_iso(now),
                        "duration": human_duration(took), "timings": _timings(job.result), "progress": None,
                        "message": f"worker {worker} restored on {node}", "conditions": conds})
    checked = "canary passed" if canary == PASSED else "no canary recorded"
    step.event(NORMAL, "Restored", f"worker {worker} restored from {status.get('artifact')} on {node} in "
               f"{human_duration(took)}; {checked}")
    if canary != PASSED:
        step.event(WARNING, "NoCanary", f"snapshot {spec.snapshot} recorded no canary: the restored worker is "
                   "running but was not verified")
    if spec.pod:
        step.pod = _pod_patch(spec, RESTORED, f"restored from {spec.snapshot} on {node}; {checked}", True, now,
                              worker=worker)
        step.event(NORMAL, "Restored", f"worker {worker} restored from snapshot {spec.snapshot}; {checked}",
                   target=_pod_ref(spec))
    return step


def _canary_failed(spec: RestoreSpec, conds: Any, node: str | None, job: Job, took: float, now: datetime) -> Step:
    detail = job.error_message or str(job.result.get("canary") or "the outputs differ")
    message = (f"the worker restored on {node} did not reproduce its canary, so it was stopped and is not "
               f"marked ready (the artifact is kept): {detail}")
    step = Step(status={"canary": CANARY_FAILED})
    step.status["conditions"] = set_condition(conds, COND_CANARY, False, "CanaryMismatch", message, now=now)
    return _give_up(spec, conds, "CanaryMismatch", message, now, step=step, took=took)


def _give_up(spec: RestoreSpec, conds: Any, reason: str, message: str, now: datetime, *, step: Step | None = None,
             took: float | None = None) -> Step:
    """Failed; a pod this restore serves falls back to a cold start (it is told so, and why)."""
    step = failed(conds, reason, message, now, step, took=took)
    if spec.pod:
        step.pod = _pod_patch(spec, COLD_START, f"{reason}: {message}", True, now)
        step.event(WARNING, "ColdStart", f"starting cold: {message}", target=_pod_ref(spec))
    return step


def canary_outcome(result: dict[str, Any]) -> str:
    """Passed, Failed or NotRecorded, from a finished restore job's result."""
    canary = result.get("canary")
    if isinstance(canary, dict):
        if canary.get("checked") is False:
            return NOT_RECORDED
        ok = canary.get("ok", canary.get("passed", canary.get("match")))
        return PASSED if ok else CANARY_FAILED
    if isinstance(canary, bool):
        return PASSED if canary else CANARY_FAILED
    if isinstance(canary, str):
        return {"passed": PASSED, "ok": PASSED, "failed": CANARY_FAILED, "mismatch": CANARY_FAILED}.get(
            canary.lower(), NOT_RECORDED)
    if result.get("canary_checked") is not None:
        return PASSED if result["canary_checked"] else NOT_RECORDED
    return NOT_RECORDED


def _timings(result: dict[str, Any]) -> dict[str, float]:
    return {str(k): round(float(v), 4) for k, v in (result.get("timings") or {}).items() if isinstance(v, (int, float))}


# --- pods that ask for a restore ----------------------------------------------------------------------------------

def pod_wants_restore(pod: dict[str, Any]) -> bool:
    """A bound, live pod annotated restore-from whose restore has not been decided yet.

    Restoring pods are included: if the operator stopped between marking the pod and creating
    its WorkerRestore, the next look creates it (take_on_pod does nothing when it exists).
    """
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return (bool(annotations.get(RESTORE_FROM)) and annotations.get(RESTORE_STATE) in (None, RESTORING)
            and not meta.get("deletionTimestamp") and bool((pod.get("spec") or {}).get("nodeName")))


def restore_for_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """The WorkerRestore that serves ``pod``: pinned to its node, owned by it (it goes when the pod goes)."""
    meta = pod["metadata"]
    name = short_name(f"{meta['name']}", 253)
    return {
        "apiVersion": API_VERSION, "kind": RESTORE_KIND,
        "metadata": {"name": name, "namespace": meta["namespace"],
                     "labels": {"thaw.dev/for-pod": short_name(meta["name"], 63)},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"],
                                          "controller": False, "blockOwnerDeletion": False}]},
        "spec": {"snapshotName": meta["annotations"][RESTORE_FROM],
                 "target": {"podName": meta["name"], "nodeName": pod["spec"]["nodeName"],
                            "workerName": short_name(meta["name"], 128)}},
    }


def take_on_pod(pod: dict[str, Any], cluster: Cluster, *, now: datetime | None = None) -> Step:
    """Mark the pod Restoring, then create its WorkerRestore (the restore reconciler does the rest).

    In that order: the restore may finish (a cold start is decided at once when there is no
    snapshot) before this step returns, and its outcome must not be overwritten by Restoring.
    """
    now = now or datetime.now(UTC)
    body = restore_for_pod(pod)
    meta = pod["metadata"]
    spec = RestoreSpec.of(body)
    # events may carry a pod as it was a moment ago: decide on the pod as it is now
    fresh = cluster.get_pod(spec.namespace, meta["name"])
    if fresh is None or not pod_wants_restore(fresh):
        return Step()
    if cluster.get_restore(spec.namespace, spec.name):
        # taken on already (the pod is marked before its WorkerRestore is made): its restore decides, and
        # marking the pod Restoring again could overwrite an outcome (ColdStart) written in between
        return Step()
    marker = _pod_patch(spec, RESTORING, f"WorkerRestore {spec.name} created", False, now)
    marker.annotations[RESTORE_OBJECT] = spec.name
    cluster.patch_pod(marker)
    created = cluster.create_restore(body["metadata"]["namespace"], body)
    if (created.get("spec") or {}).get("target", {}).get("podName") != meta["name"]:
        raise ThawError(f"WorkerRestore {spec.name} exists and serves another pod",
                        hint="delete it, or rename the pod's owner")
    return Step().event(NORMAL, "RestoreRequested", f"restoring from snapshot {meta['annotations'][RESTORE_FROM]} "
                        f"(WorkerRestore {spec.name})", target=pod)


def release_pod(pod: dict[str, Any], cluster: Cluster, connect: Connect, *, retry: int = 0) -> Step:
    """Before a restore-from pod goes: stop the worker restored for it, so that scaling down frees its GPU.

    A restore still running is waited for (its worker would otherwise appear after the pod is
    gone, holding a GPU for nobody). Nothing to do for a cold-started pod, or when its node is gone.
    """
    from thaw.k8s.cluster import agent_for

    meta = pod["metadata"]
    annotations = meta.get("annotations") or {}
    state, node = annotations.get(RESTORE_STATE), (pod.get("spec") or {}).get("nodeName")
    step = Step()
    if state not in (RESTORING, RESTORED) or not node:
        return step
    if node not in {n["metadata"]["name"] for n in cluster.list_nodes()}:
        return step  # the node went (scaled away) and its workers with it
    worker = annotations.get(RESTORED_WORKER) or short_name(meta["name"], 128)
    try:
        agent = agent_for(cluster, connect, node)
        if state == RESTORING:
            restore = cluster.get_restore(meta["namespace"], annotations.get(RESTORE_OBJECT) or meta["name"])
            job_id = ((restore or {}).get("status") or {}).get("agentJob")
            if job_id and not Job.from_dict(agent.job(job_id)).done:
                return retry_later(step, f"restore job {job_id} for pod {meta['name']} still running; its worker "
                                   "is stopped once it finishes", retry)
        agent.stop_worker(worker)
    except Exception as exc:
        if agents.is_temporary(exc):
            return retry_later(step, f"cannot stop worker {worker} on {node} yet: {exc}", retry)
        raise
    return step.event(NORMAL, "WorkerStopped", f"stopped worker {worker} on {node}: its pod is going", target=pod)


def _pod_patch(spec: RestoreSpec, state: str, message: str, gate_open: bool, now: datetime, *,
               worker: str | None = None) -> PodPatch:
    annotations = {RESTORE_STATE: state, RESTORE_REASON: message[:1024]}
    if worker:
        annotations[RESTORED_WORKER] = worker
    condition = {"type": POD_CONDITION, "status": "True" if gate_open else "False",
                 "reason": state,
                 "message": message[:32000], "lastTransitionTime": now_iso(now)}
    return PodPatch(namespace=spec.namespace, name=spec.pod or "", annotations=annotations, condition=condition)


def _pod_ref(spec: RestoreSpec) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": spec.pod, "namespace": spec.namespace}}
