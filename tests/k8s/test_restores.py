"""WorkerRestore reconciliation and the restore-from pod path, against in-memory fakes."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

from thaw.k8s.cluster import AgentLookup
from thaw.k8s import restores
from thaw.k8s.status import condition

from .fakes import (
    Agents,
    FakeAgent,
    FakeCluster,
    node,
    pod,
    pod_uid,
    ready_snapshot,
    restore,
    snapshot,
)

T0 = datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC)
A, B = "http://127.0.0.2:7070", "http://127.0.0.3:7070"
GPUS_B = [{"uuid": "GPU-b0", "name": "NVIDIA H200", "memory_free": 100 << 30},
          {"uuid": "GPU-b1", "name": "NVIDIA H200", "memory_free": 140 << 30}]


def world(*objects, pods=()):
    agent_a, agent_b = FakeAgent(A), FakeAgent(B, gpus=GPUS_B)
    cluster = FakeCluster(nodes=[node("node-a", product="NVIDIA-A100", gpus=8, agent=A),
                                 node("node-b", product="NVIDIA-H200", gpus=8, agent=B)],
                          pods=list(pods), snapshots=list(objects))
    return cluster, agent_a, agent_b, Agents(agent_a, agent_b)


def advance(body, step):
    body = dict(body)
    body["status"] = {**(body.get("status") or {}), **step.status}
    return body


def started(cluster, connect, body):
    step = restores.reconcile(body, cluster, connect, now=T0)
    assert step.status["phase"] == "Restoring", step.status
    return advance(body, step), step


def test_restores_on_a_node_with_the_snapshots_gpu_model_onto_its_freest_gpu():
    cluster, a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1))
    _body, step = started(cluster, connect, restore())
    assert a.calls == [] and b.calls == [("node_info",), ("restore", "ml.snap", "GPU-b1", "r1")]
    (job,) = b.jobs.values()
    assert job["request"]["digest"] == "xxh3_128:00", "pinned to the digest the snapshot recorded"
    assert (step.status["node"], step.status["gpu"], step.status["worker"]) == ("node-b", "GPU-b1", "r1")
    assert condition(step.status["conditions"], "Scheduled")["status"] == "True"
    assert [e.reason for e in step.events] == ["RestoreStarted"]


def test_ready_only_after_the_job_passed_its_canary():
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1))
    body, _ = started(cluster, connect, restore())
    assert restores.reconcile(body, cluster, connect, now=T0).status.get("phase") is None  # job still running
    b.finish("job-1", {"worker": {"name": "r1", "ready": True}, "timings": {"criu_restore": 1.25},
                       "canary": {"checked": True, "match": True}})
    step = restores.reconcile(body, cluster, connect, now=T0 + timedelta(seconds=3))
    assert step.status["phase"] == "Ready" and step.status["canary"] == "Passed"
    assert condition(step.status["conditions"], "CanaryPassed")["status"] == "True"
    assert condition(step.status["conditions"], "Ready")["status"] == "True"
    assert step.status["timings"] == {"criu_restore": 1.25} and step.status["duration"] == "3.0s"
    assert [e.reason for e in step.events] == ["Restored"]


def test_a_canary_mismatch_is_never_ready():
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1))
    body, _ = started(cluster, connect, restore())
    b.fail("job-1", "canary_mismatch", "canary differs: token 3: 17 != 42")
    step = restores.reconcile(body, cluster, connect, now=T0)
    assert step.status["phase"] == "Failed" and step.status["canary"] == "Failed"
    assert condition(step.status["conditions"], "CanaryPassed")["status"] == "False"
    ready = condition(step.status["conditions"], "Ready")
    assert ready["status"] == "False" and ready["reason"] == "CanaryMismatch" and "17 != 42" in ready["message"]
    assert [(e.type, e.reason) for e in step.events] == [("Warning", "CanaryMismatch")]


def test_a_succeeded_job_reporting_a_canary_mismatch_is_still_not_ready():
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1))
    body, _ = started(cluster, connect, restore())
    b.finish("job-1", {"worker": {"name": "r1"}, "canary": {"checked": True, "match": False}})
    assert restores.reconcile(body, cluster, connect, now=T0).status["phase"] == "Failed"


def test_no_canary_recorded_is_ready_but_says_it_was_not_verified():
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1, canary=False))
    body, _ = started(cluster, connect, restore())
    b.finish("job-1", {"worker": {"name": "r1"}, "canary": {"checked": False}})
    step = restores.reconcile(body, cluster, connect, now=T0)
    assert step.status["phase"] == "Ready" and step.status["canary"] == "NotRecorded"
    assert condition(step.status["conditions"], "CanaryPassed")["status"] == "Unknown"
    assert [e.reason for e in step.events] == ["Restored", "NoCanary"]


def test_other_job_failures_and_lost_jobs_fail_with_their_reason():
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1))
    body, _ = started(cluster, connect, restore())
    b.fail("job-1", "integrity", "images/pages-1.img: digest mismatch")
    step = restores.reconcile(body, cluster, connect, now=T0)
    assert condition(step.status["conditions"], "Ready")["reason"] == "RestoreIntegrity"
    b.jobs.clear()
    assert condition(restores.reconcile(body, cluster, connect, now=T0).status["conditions"], "Ready")["reason"] == "JobLost"


def test_waits_for_a_snapshot_in_progress_and_fails_on_a_missing_or_failed_one():
    cluster, _a, _b, connect = world(snapshot(status={"phase": "Snapshotting"}))
    step = restores.reconcile(restore(), cluster, connect, now=T0)
    assert step.status["phase"] == "Pending" and step.retry_in is None
    assert condition(step.status["conditions"], "Ready")["reason"] == "SnapshotNotReady"
    cluster.snapshots[("ml", "snap")]["status"]["phase"] = "Failed"
    assert restores.reconcile(restore(), cluster, connect, now=T0).status["phase"] == "Failed"
    step = restores.reconcile(restore(snap="nope"), cluster, connect, now=T0)
    assert condition(step.status["conditions"], "Ready")["reason"] == "SnapshotNotFound"


def test_no_node_fits_yet_is_retried_and_explained():
    cluster, _a, _b, connect = world(ready_snapshot(product="NVIDIA GB200", gpus=1))
    step = restores.reconcile(restore(), cluster, connect, now=T0)
    assert step.retry_in is not None and step.status["phase"] == "Pending"
    scheduled = condition(step.status["conditions"], "Scheduled")
    assert scheduled["status"] == "False" and "node-b: GPU nvidia-h200, the snapshot needs nvidia-gb200" in scheduled["message"]


def test_a_pinned_node_and_gpu_are_honoured():
    cluster, a, _b, connect = world(ready_snapshot())  # CPU-only snapshot: any node with an agent
    _body, _step = started(cluster, connect, restore(target={"nodeName": "node-a", "workerName": "copy-1"}))
    assert a.calls == [("node_info",), ("restore", "ml.snap", None, "copy-1")]
    cluster2, _a2, b2, connect2 = world(ready_snapshot(product="NVIDIA H200", gpus=1))
    started(cluster2, connect2, restore(target={"gpu": "GPU-b0"}))
    assert b2.calls[-1] == ("restore", "ml.snap", "GPU-b0", "r1")


# --- pods that ask for a restore ------------------------------------------------------------------------------

def annotated(name="worker-1", node_name="node-b", **annotations):
    return pod(name, node=node_name, gpus=1, phase="Pending", annotations={"thaw.dev/restore-from": "snap", **annotations})


def test_which_pods_the_operator_takes_on():
    assert restores.pod_wants_restore(annotated())
    assert not restores.pod_wants_restore(annotated(node_name=None))  # not scheduled yet
    assert restores.pod_wants_restore(annotated(**{"thaw.dev/restore-state": "Restoring"}))  # re-checked until decided
    assert not restores.pod_wants_restore(annotated(**{"thaw.dev/restore-state": "Restored"}))
    assert not restores.pod_wants_restore(annotated(**{"thaw.dev/restore-state": "ColdStart"}))
    assert not restores.pod_wants_restore(pod("plain"))
    gone = annotated()
    gone["metadata"]["deletionTimestamp"] = "2026-11-28T10:00:00Z"
    assert not restores.pod_wants_restore(gone)


def test_a_restore_from_pod_gets_its_own_workerrestore_pinned_to_its_node_and_owned_by_it():
    p = annotated()
    cluster, _a, _b, _connect = world(ready_snapshot(product="NVIDIA H200", gpus=1), pods=[p])
    step = restores.take_on_pod(p, cluster, now=T0)
    (key, body), = cluster.restores.items()
    assert key == ("ml", "worker-1")
    assert body["spec"] == {"snapshotName": "snap",
                            "target": {"podName": "worker-1", "nodeName": "node-b", "workerName": "worker-1"}}
    assert body["metadata"]["ownerReferences"][0]["uid"] == pod_uid("worker-1")
    (marker,) = cluster.pod_patches  # written before the WorkerRestore exists, so it cannot overwrite its outcome
    assert marker.annotations["thaw.dev/restore-state"] == "Restoring"
    assert marker.annotations["thaw.dev/workerrestore"] == "worker-1"
    assert marker.condition["type"] == "thaw.dev/restored" and marker.condition["status"] == "False"
    assert [e.reason for e in step.events] == ["RestoreRequested"]
    # looking again while it is under way does nothing
    assert restores.take_on_pod(cluster.get_pod("ml", "worker-1"), cluster, now=T0).events == []
    assert len(cluster.pod_patches) == 1
    # the operator stopped after marking the pod but before creating the WorkerRestore: the next look creates it
    cluster.restores.clear()
    restores.take_on_pod(cluster.get_pod("ml", "worker-1"), cluster, now=T0)
    assert list(cluster.restores) == [("ml", "worker-1")]


def test_a_restored_pod_is_told_so_and_its_readiness_gate_opens():
    p = annotated()
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1), pods=[p])
    restores.take_on_pod(p, cluster, now=T0)
    body = cluster.restores[("ml", "worker-1")]
    body["metadata"]["creationTimestamp"] = "2026-11-28T10:00:00Z"
    body, step = started(cluster, connect, body)
    # the pod's own GPU request is the GPU the restore uses: node-b is not "full" because of it
    assert b.calls[-1] == ("restore", "ml.snap", "GPU-b1", "worker-1")
    assert step.pod.annotations["thaw.dev/restore-state"] == "Restoring"
    b.finish("job-1", {"worker": {"name": "worker-1"}, "canary": {"checked": True, "match": True}})
    done = restores.reconcile(body, cluster, connect, now=T0)
    assert done.pod.annotations["thaw.dev/restore-state"] == "Restored"
    assert done.pod.annotations["thaw.dev/restored-worker"] == "worker-1"
    assert done.pod.condition["status"] == "True" and done.pod.condition["reason"] == "Restored"
    assert [e.target["kind"] for e in done.events if e.target] == ["Pod"]


def test_a_pod_falls_back_to_a_cold_start_without_a_valid_snapshot_or_on_a_failed_canary():
    for snap in (None, snapshot(status={"phase": "Snapshotting"}), ready_snapshot(product="NVIDIA A100", gpus=1)):
        p = annotated()
        cluster, _a, b, connect = world(*([snap] if snap else []), pods=[p])
        body = restores.restore_for_pod(p)
        body["metadata"]["creationTimestamp"] = "2026-11-28T10:00:00Z"
        step = restores.reconcile(body, cluster, connect, now=T0)
        assert step.status["phase"] == "Failed"
        assert step.pod.annotations["thaw.dev/restore-state"] == "ColdStart"
        assert step.pod.condition["status"] == "True" and step.pod.condition["reason"] == "ColdStart"
        assert ("Warning", "ColdStart") in [(e.type, e.reason) for e in step.events if e.target]
        assert b.calls == [] or b.calls[0] == ("node_info",)
    # an A100 snapshot for a pod the scheduler put on an H200 node: no restore there, cold start
    assert "node-b: GPU nvidia-h200, the snapshot needs nvidia-a100" in step.pod.annotations["thaw.dev/restore-reason"]

    p = annotated()
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1), pods=[p])
    body = restores.restore_for_pod(p)
    body["metadata"]["creationTimestamp"] = "2026-11-28T10:00:00Z"
    body, _ = started(cluster, connect, body)
    b.fail("job-1", "canary_mismatch", "outputs differ")
    step = restores.reconcile(body, cluster, connect, now=T0)
    assert step.status["canary"] == "Failed"
    assert step.pod.annotations["thaw.dev/restore-state"] == "ColdStart"
    assert "thaw.dev/restored-worker" not in step.pod.annotations  # the failed copy is not the pod's worker


def test_a_restore_that_never_finishes_times_out():
    cluster, _a, _b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1))
    body, _ = started(cluster, connect, restore())
    step = restores.reconcile(body, cluster, connect, now=T0 + timedelta(seconds=901))
    assert condition(step.status["conditions"], "Ready")["reason"] == "Timeout"


def test_a_pod_on_a_node_whose_agent_is_not_up_yet_waits_a_little_then_starts_cold():
    p = annotated(node_name="node-new")
    cluster, _a, _b, connect = world(ready_snapshot(), pods=[p])
    cluster.nodes.append(node("node-new"))  # an autoscaler just added it; its agent pod is still starting
    body = restores.restore_for_pod(p)
    body["metadata"]["creationTimestamp"] = "2026-11-28T10:00:00Z"
    early = restores.reconcile(body, cluster, connect, now=T0)
    assert early.retry_in is not None and early.pod is None
    assert condition(early.status["conditions"], "Ready")["reason"] == "AgentNotReady"
    late = restores.reconcile(body, cluster, connect, now=T0 + timedelta(seconds=restores.AGENT_GRACE_S))
    assert late.pod.annotations["thaw.dev/restore-state"] == "ColdStart"
    assert "no ready thaw agent on node-new" in late.pod.annotations["thaw.dev/restore-reason"]


def test_scaling_down_stops_the_worker_restored_for_the_pod():
    p = annotated(**{"thaw.dev/restore-state": "Restored", "thaw.dev/restored-worker": "worker-1"})
    cluster, _a, b, connect = world(pods=[p])
    step = restores.release_pod(p, cluster, connect)
    assert b.calls == [("stop_worker", "worker-1")] and step.retry_in is None
    assert [e.reason for e in step.events] == ["WorkerStopped"]
    b.down = True
    assert restores.release_pod(p, cluster, connect, retry=1).retry_in == 2.0
    cluster.nodes = [n for n in cluster.nodes if n["metadata"]["name"] != "node-b"]  # the node itself went away
    assert restores.release_pod(p, cluster, connect).retry_in is None


def test_a_pod_deleted_mid_restore_waits_for_the_restore_then_stops_its_worker():
    p = annotated()
    cluster, _a, b, connect = world(ready_snapshot(), pods=[p])
    restores.take_on_pod(p, cluster, now=T0)
    p["metadata"]["annotations"].update({"thaw.dev/restore-state": "Restoring", "thaw.dev/workerrestore": "worker-1"})
    body = cluster.restores[("ml", "worker-1")]
    body["metadata"]["creationTimestamp"] = "2026-11-28T10:00:00Z"
    body, _ = started(cluster, connect, body)
    cluster.restores[("ml", "worker-1")] = body
    assert restores.release_pod(p, cluster, connect).retry_in is not None
    assert ("stop_worker", "worker-1") not in b.calls
    b.finish("job-1", {"worker": {"name": "worker-1"}, "canary": {"checked": True, "match": True}})
    assert restores.release_pod(p, cluster, connect).retry_in is None
    assert b.calls[-1] == ("stop_worker", "worker-1")


def test_nothing_to_stop_for_a_cold_started_pod():
    p = annotated(**{"thaw.dev/restore-state": "ColdStart"})
    cluster, _a, b, connect = world(pods=[p])
    assert restores.release_pod(p, cluster, connect).events == [] and b.calls == []


# --- a dead agent never stalls a scale-up (issue 17) ----------------------------------------------------------

def test_a_pod_whose_agent_refuses_connections_starts_cold_at_the_agent_deadline_not_the_restore_timeout():
    p = annotated(node_name="node-b")
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1), pods=[p])
    b.down = True  # its address exists (a crash-looping pod keeps its IP), but nothing answers
    body = restores.restore_for_pod(p)
    body["metadata"]["creationTimestamp"] = "2026-11-28T10:00:00Z"
    messages = []
    for retry, seconds in enumerate((5, 30, 90)):
        step = restores.reconcile(body, cluster, connect, retry=retry, now=T0 + timedelta(seconds=seconds))
        assert step.retry_in is not None and step.pod is None
        # kubectl get shows where it stands: phase, node, and a Ready condition saying why
        assert (step.status["phase"], step.status["node"]) == ("Pending", "node-b")
        assert condition(step.status["conditions"], "Ready")["status"] == "False"
        assert condition(step.status["conditions"], "AgentReachable")["status"] == "False"
        messages.append(step.status["message"])
        body = advance(body, step)
    # the reason is recorded on every retry, and it names the agent and what to look at
    assert all("does not answer" in m and "connection refused" in m and "thaw-agent DaemonSet" in m for m in messages)
    assert [f"retry {n}" in m for n, m in enumerate(messages, 1)] == [True, True, True]
    late = restores.reconcile(body, cluster, connect, retry=3, now=T0 + timedelta(seconds=restores.AGENT_GRACE_S))
    assert late.pod.annotations["thaw.dev/restore-state"] == "ColdStart"
    assert "does not answer" in late.pod.annotations["thaw.dev/restore-reason"]
    assert condition(late.status["conditions"], "Ready")["reason"] == "AgentUnreachable"


def test_an_agent_that_answers_again_is_announced_and_its_stale_condition_cleared():
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1))
    b.down = True
    down = restores.reconcile(restore(), cluster, connect, now=T0)
    assert [e.reason for e in down.events] == ["AgentUnreachable"]
    assert (down.status["phase"], condition(down.status["conditions"], "Ready")["status"]) == ("Pending", "False")
    b.down = False
    up = restores.reconcile(advance(restore(), down), cluster, connect, retry=1, now=T0)
    assert up.status["phase"] == "Restoring"
    assert condition(up.status["conditions"], "AgentReachable")["status"] == "True"
    assert [e.reason for e in up.events] == ["AgentReachable", "RestoreStarted"]


def test_a_pod_running_thaws_entrypoint_is_restored_into_with_its_own_gpu_and_the_objects_uid_as_key():
    p = annotated(node_name="node-b")
    p["spec"]["containers"][0]["command"] = ["python3", "-m", "thaw.sandbox.entrypoint", "--", "python3", "serve.py"]
    p["status"]["containerStatuses"] = [{"name": "worker", "state": {"running": {}}}]
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1), pods=[p])
    body = restores.restore_for_pod(p)
    body["metadata"].update(creationTimestamp="2026-11-28T10:00:00Z", uid="uid-of-the-restore")
    step = restores.reconcile(body, cluster, connect, now=T0)
    assert step.status["phase"] == "Restoring", step.status
    request = b.jobs["job-1"]["request"]
    # no GPU chosen from the agent's report: the agent uses the one the device plugin gave the pod
    assert ("node_info",) not in b.calls and request["gpu"] is None
    assert request["pod"] == {"namespace": "ml", "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]}
    assert request["key"] == "uid-of-the-restore"
    # a retried start (the answer was lost) gets the same job back
    again = restores.reconcile(body, cluster, connect, now=T0)
    assert again.status["agentJob"] == step.status["agentJob"] == "job-1" and len(b.jobs) == 1


def test_the_agent_of_a_node_is_its_ready_pod_not_merely_a_running_one():
    from thaw.k8s.agents import agent_url

    n = node("node-b")
    owner = [{"kind": "DaemonSet", "name": "thaw-agent", "controller": True}]
    running = {"metadata": {"name": "thaw-agent-x", "ownerReferences": owner}, "spec": {"nodeName": "node-b"},
               "status": {"phase": "Running", "podIP": "10.0.0.7",
                          "conditions": [{"type": "Ready", "status": "False"}]}}  # crash-looping: Running, not Ready
    assert agent_url(n, [running], lookup=AgentLookup()) is None
    running["status"]["conditions"][0]["status"] = "True"
    assert agent_url(n, [running], lookup=AgentLookup()) == "http://10.0.0.7:7070"
    assert agent_url(n, [running], lookup=AgentLookup(scheme="https")) == "https://10.0.0.7:7070"


def test_only_pods_of_the_agent_daemonset_are_agents_and_node_annotations_only_when_allowed():
    """Before: any pod with the agent's label, or any URL a Node annotation named, got the operator's token."""
    from thaw.k8s.agents import agent_url

    impostor = {"metadata": {"name": "thaw-agent-evil", "ownerReferences": [
                    {"kind": "ReplicaSet", "name": "thaw-agent", "controller": True}]},
                "spec": {"nodeName": "node-b"},
                "status": {"podIP": "10.0.0.66", "conditions": [{"type": "Ready", "status": "True"}]}}
    annotated = node("node-b", agent="http://attacker.example:80")
    assert agent_url(annotated, [impostor], lookup=AgentLookup()) is None
    assert agent_url(annotated, [impostor], lookup=AgentLookup(url_annotation=True)) == "http://attacker.example:80"
    impostor["metadata"]["ownerReferences"] = [{"kind": "DaemonSet", "name": "thaw-agent", "controller": True}]
    assert agent_url(annotated, [impostor], lookup=AgentLookup()) == "http://10.0.0.66:7070"


def test_a_pod_is_restored_into_only_once_its_entrypoint_runs():
    p = annotated(node_name="node-b")
    p["spec"]["containers"][0]["command"] = ["python3", "-m", "thaw.sandbox.entrypoint", "--", "serve"]
    cluster, _a, b, connect = world(ready_snapshot(product="NVIDIA H200", gpus=1), pods=[p])
    body = restores.restore_for_pod(p)
    body["metadata"]["creationTimestamp"] = "2026-11-28T10:00:00Z"
    p["status"]["containerStatuses"] = [{"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}]
    cluster.pods[("ml", "worker-1")] = p
    step = restores.reconcile(body, cluster, connect, now=T0)
    assert step.retry_in is not None and b.jobs == {}
    assert condition(step.status["conditions"], "Ready")["reason"] == "PodStarting"
    p["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": "2026-11-28T10:00:03Z"}}
    assert restores.reconcile(body, cluster, connect, now=T0).status["phase"] == "Restoring"


def test_a_stale_pod_event_never_overwrites_the_outcome_written_since():
    p = annotated()
    cluster, _a, _b, _connect = world(pods=[p])
    stale = copy.deepcopy(p)  # the event's body: not taken on yet
    restores.take_on_pod(p, cluster, now=T0)
    cluster.pods[("ml", "worker-1")]["metadata"]["annotations"]["thaw.dev/restore-state"] = "ColdStart"
    patches = len(cluster.pod_patches)
    assert restores.take_on_pod(stale, cluster, now=T0).events == []
    assert len(cluster.pod_patches) == patches  # ColdStart stays
