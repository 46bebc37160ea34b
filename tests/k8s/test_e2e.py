"""End to end against a real API server: the operator, two real agents, real CRIU, a real worker.

A worker parked on node-a is snapshotted through a WorkerSnapshot, restored on node-b
through a WorkerRestore (Ready only after the agent verified its canary), and restored
again for every replica of a Deployment whose pods carry thaw.dev/restore-from - the path
an autoscaler takes - falling back to a cold start when there is no valid snapshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from thaw.store.manifest import Manifest

from .conftest import (
    WORKER_SECCOMP,
    Agents,
    ControlPlane,
    Operator,
    events_for,
    get_object,
    launch_worker,
    mark_running,
    wait_for,
    wait_phase,
    worker_pod,
)

pytestmark = [pytest.mark.k8s, pytest.mark.criu, pytest.mark.slow]


def snapshot_of(cp: ControlPlane, namespace: str, name: str, pod: str, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "thaw.dev/v1alpha1", "kind": "WorkerSnapshot",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"podName": pod, **spec}}
    return cp.custom.create_namespaced_custom_object("thaw.dev", "v1alpha1", namespace, "workersnapshots", body)


def restore_of(cp: ControlPlane, namespace: str, name: str, snapshot: str, **target: str) -> dict[str, Any]:
    body = {"apiVersion": "thaw.dev/v1alpha1", "kind": "WorkerRestore",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"snapshotName": snapshot, "target": target}}
    return cp.custom.create_namespaced_custom_object("thaw.dev", "v1alpha1", namespace, "workerrestores", body)


def condition(obj: dict[str, Any], type: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type)


def snapshot_worker(cp: ControlPlane, agents: Agents, operator: Operator, namespace: str, tmp: Path, name: str,
                    **env: str) -> dict[str, Any]:
    """A worker launched on node-a, its Pod, and a WorkerSnapshot of it taken to Ready."""
    worker = f"{namespace}-{name}"
    launch_worker(agents["node-a"], worker, tmp / name, **env)
    worker_pod(cp, namespace, f"{name}-pod", node="node-a", worker=worker)
    snapshot_of(cp, namespace, name, f"{name}-pod")
    return wait_phase(cp, namespace, "workersnapshots", name, ("Ready", "Failed"), operator=operator)


def test_snapshot_on_one_node_restore_on_the_other_ready_after_the_canary(
        control_plane: ControlPlane, agents: Agents, operator: Operator, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    snap = snapshot_worker(cp, agents, operator, namespace, tmp_path, "llm")
    status = snap["status"]
    assert status["phase"] == "Ready", status
    assert (status["node"], status["worker"]) == ("node-a", f"{namespace}-llm")
    # the artifact recorded is the one in the shared store, digest and all
    manifest = Manifest.model_validate(agents["node-b"].client.artifact(status["artifact"]["name"]))
    assert status["artifact"]["name"] == f"{namespace}.llm"
    assert status["artifact"]["digest"] == manifest.digest and status["artifact"]["sizeBytes"] == manifest.size > 0
    assert status["artifact"]["id"] == manifest.artifact_id and status["artifact"]["hasCanary"] is True
    assert status["timings"]["dump"] > 0
    assert condition(snap, "Ready")["status"] == "True"
    assert {"SnapshotStarted", "SnapshotReady"} <= {r for _, r, _ in events_for(cp, namespace, "llm")}

    restore_of(cp, namespace, "llm-copy", "llm", nodeName="node-b")
    restored = wait_phase(cp, namespace, "workerrestores", "llm-copy", ("Ready", "Failed"), operator=operator)
    assert restored["status"]["phase"] == "Ready", restored["status"]
    assert restored["status"]["node"] == "node-b" and restored["status"]["canary"] == "Passed"
    assert condition(restored, "CanaryPassed")["status"] == "True"
    worker = agents["node-b"].client.worker("llm-copy")
    assert worker.origin == "restored" and worker.ready and worker.artifact == f"{namespace}.llm"
    assert {"RestoreStarted", "Restored"} <= {r for _, r, _ in events_for(cp, namespace, "llm-copy")}
    # kubectl shows it all at a glance
    table = cp.kubectl("get", "thaw", "-n", namespace).stdout
    assert "workersnapshot.thaw.dev/llm" in table and "workerrestore.thaw.dev/llm-copy" in table
    assert "Passed" in table and "node-b" in table


def test_a_restore_that_fails_its_canary_is_never_ready(
        control_plane: ControlPlane, agents: Agents, operator: Operator, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    # this worker's canary answers differently after every restore (its thaw hook perturbs its state)
    snap = snapshot_worker(cp, agents, operator, namespace, tmp_path, "flaky", TEST_CANARY_RANDOM="1")
    assert snap["status"]["phase"] == "Ready", snap["status"]
    restore_of(cp, namespace, "flaky-copy", "flaky", nodeName="node-b")
    seen_ready = []

    def finished() -> dict[str, Any] | None:
        obj = get_object(cp, namespace, "workerrestores", "flaky-copy")
        phase = (obj.get("status") or {}).get("phase")
        seen_ready.append(phase == "Ready")
        return obj if phase == "Failed" else None

    failed = wait_for(finished, timeout=120, what="the restore to fail its canary", every=0.1)
    assert not any(seen_ready)
    assert failed["status"]["canary"] == "Failed"
    assert condition(failed, "CanaryPassed")["status"] == "False"
    ready = condition(failed, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "CanaryMismatch"
    assert ("Warning", "CanaryMismatch") in [(t, r) for t, r, _ in events_for(cp, namespace, "flaky-copy")]
    # the agent stopped the copy: nothing named flaky-copy serves on node-b
    assert not [w for w in agents["node-b"].client.workers() if w.name == "flaky-copy" and w.alive]


def test_a_node_without_a_reachable_agent_shows_as_condition_and_event(
        control_plane: ControlPlane, agents: Agents, operator: Operator, namespace: str) -> None:
    cp = control_plane
    worker_pod(cp, namespace, "stranded", node="node-c", worker="stranded")
    snapshot_of(cp, namespace, "stranded", "stranded")

    def unreachable() -> dict[str, Any] | None:
        obj = get_object(cp, namespace, "workersnapshots", "stranded")
        conds = (obj.get("status") or {}).get("conditions") or []
        return obj if any(c["type"] == "AgentReachable" and c["status"] == "False" for c in conds) else None

    obj = wait_for(unreachable, timeout=60, what="AgentReachable=False")
    assert obj["status"].get("phase", "Pending") == "Pending"
    assert "no thaw agent found for node node-c" in condition(obj, "AgentReachable")["message"]
    assert ("Warning", "AgentUnreachable") in [(t, r) for t, r, _ in events_for(cp, namespace, "stranded")]


def deployment(name: str, snapshot: str) -> dict[str, Any]:
    """A Deployment whose replicas start from a snapshot: the annotation, and a readiness gate on the restore."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels, "annotations": {"thaw.dev/restore-from": snapshot}},
                              "spec": {"readinessGates": [{"conditionType": "thaw.dev/restored"}],
                                       "nodeSelector": {"thaw.dev/pool": "gpu"},
                                       # the nodes whose agents run (node-c stands for a node whose agent is down)
                                       "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                           "nodeSelectorTerms": [{"matchExpressions": [{
                                               "key": "kubernetes.io/hostname", "operator": "In",
                                               "values": ["node-a", "node-b"]}]}]}}},
                                       "tolerations": [{"key": "thaw.dev/pool", "operator": "Exists",
                                                        "effect": "NoSchedule"}],
                                       "containers": [{"name": "worker", "image": "example/worker:1"}]}}},
    }


def pods_of(cp: ControlPlane, namespace: str, app: str) -> list[Any]:
    return cp.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items


def scale_and_play_kubelet(cp: ControlPlane, namespace: str, app: str, replicas: int) -> list[Any]:
    """Scale up as an autoscaler would; once the scheduler has bound each new pod, start it as its kubelet would."""
    cp.apps.patch_namespaced_deployment_scale(app, namespace, {"spec": {"replicas": replicas}})
    pods = wait_for(lambda: (p := pods_of(cp, namespace, app)) and len(p) == replicas
                    and all(x.spec.node_name for x in p) and p, timeout=60,
                    what=f"{replicas} pods of {app} to be created and scheduled")
    for p in pods:
        mark_running(cp, namespace, p.metadata.name)
    return pods


def restore_state(pod: Any) -> tuple[str | None, str | None]:
    annotations = pod.metadata.annotations or {}
    gate = next((c.status for c in pod.status.conditions or [] if c.type == "thaw.dev/restored"), None)
    return annotations.get("thaw.dev/restore-state"), gate


def test_autoscaler_scale_up_restores_new_replicas_or_falls_back_to_cold_start(
        control_plane: ControlPlane, agents: Agents, operator: Operator, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    assert snapshot_worker(cp, agents, operator, namespace, tmp_path, "base")["status"]["phase"] == "Ready"
    cp.apps.create_namespaced_deployment(namespace, deployment("llm", "base"))
    pods = scale_and_play_kubelet(cp, namespace, "llm", 2)

    def all_restored() -> list[Any] | None:
        now = pods_of(cp, namespace, "llm")
        states = [restore_state(p) for p in now]
        assert ("ColdStart", "True") not in states, [p.metadata.annotations for p in now]
        return now if states == [("Restored", "True")] * 2 else None

    try:
        restored = wait_for(all_restored, timeout=120, what="both replicas restored", every=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{operator.tail()}") from None
    for pod in restored:
        node, worker = pod.spec.node_name, pod.metadata.annotations["thaw.dev/restored-worker"]
        assert worker == pod.metadata.name
        copy = agents[node].client.worker(worker)
        assert copy.origin == "restored" and copy.ready, copy
        wr = get_object(cp, namespace, "workerrestores", pod.metadata.name)
        assert wr["status"]["canary"] == "Passed" and wr["metadata"]["ownerReferences"][0]["uid"] == pod.metadata.uid
        assert ("Normal", "Restored") in [(t, r) for t, r, _ in events_for(cp, namespace, pod.metadata.name)]
    assert {p.metadata.name for p in restored} == {p.metadata.name for p in pods}

    # scaling down stops the restored workers (the pods' finalizer), so their GPUs are free again
    assert all("thaw.dev/cleanup" in (p.metadata.finalizers or []) for p in restored)
    cp.apps.patch_namespaced_deployment_scale("llm", namespace, {"spec": {"replicas": 0}})
    for pod in restored:
        node, worker = pod.spec.node_name, pod.metadata.annotations["thaw.dev/restored-worker"]
        client, name = agents[node].client, pod.metadata.name
        wait_for(lambda c=client, w=worker: not c.worker(w).alive, timeout=60,
                 what=f"worker {worker} to be stopped on {node}")
        # what the kubelet would do once the containers are gone: finish the deletion
        wait_for(lambda n=name: not (cp.core.read_namespaced_pod(n, namespace).metadata.finalizers or []),
                 timeout=30, what="the operator to release the pod")
        cp.core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    wait_for(lambda: not pods_of(cp, namespace, "llm"), timeout=30, what="the replicas to go")

    # no valid snapshot behind the annotation: new replicas start cold, and say why
    cp.apps.create_namespaced_deployment(namespace, deployment("cold", "no-such-snapshot"))
    scale_and_play_kubelet(cp, namespace, "cold", 1)
    cold = wait_for(lambda: [p for p in pods_of(cp, namespace, "cold") if restore_state(p) == ("ColdStart", "True")],
                    timeout=60, what="the replica to fall back to a cold start")[0]
    assert "SnapshotNotFound" in cold.metadata.annotations["thaw.dev/restore-reason"]
    # Events are posted after the pod is patched, asynchronously: wait for it rather than race it
    wait_for(lambda: ("Warning", "ColdStart") in [(t, r) for t, r, _ in events_for(cp, namespace, cold.metadata.name)],
             timeout=30, what="the ColdStart Warning Event on the pod")


def test_deleting_a_snapshot_deletes_its_artifact_unless_retained(
        control_plane: ControlPlane, agents: Agents, operator: Operator, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    gone = snapshot_worker(cp, agents, operator, namespace, tmp_path, "gone")
    kept_worker = f"{namespace}-kept"
    launch_worker(agents["node-a"], kept_worker, tmp_path / "kept")
    worker_pod(cp, namespace, "kept-pod", node="node-a", worker=kept_worker)
    snapshot_of(cp, namespace, "kept", "kept-pod", retention="Retain")
    kept = wait_phase(cp, namespace, "workersnapshots", "kept", ("Ready", "Failed"), operator=operator)
    assert gone["metadata"]["finalizers"] == ["thaw.dev/cleanup"]
    names = {a.name for a in agents["node-a"].client.artifacts()}
    assert {gone["status"]["artifact"]["name"], kept["status"]["artifact"]["name"]} <= names

    for name in ("gone", "kept"):
        cp.custom.delete_namespaced_custom_object("thaw.dev", "v1alpha1", namespace, "workersnapshots", name)
    def remaining() -> list[str]:
        items = cp.custom.list_namespaced_custom_object("thaw.dev", "v1alpha1", namespace, "workersnapshots")["items"]
        return [o["metadata"]["name"] for o in items]

    wait_for(lambda: not remaining(), timeout=60, what="both WorkerSnapshots to go")
    names = {a.name for a in agents["node-a"].client.artifacts()}
    assert gone["status"]["artifact"]["name"] not in names
    assert kept["status"]["artifact"]["name"] in names


def test_why_the_agent_runs_without_seccomp(agents: Agents, tmp_path: Path) -> None:
    """Any seccomp filter on the agent breaks checkpointing a worker that has one (as every pod's container does).

    CRIU suspends the worker's filter while it dumps it (PTRACE_O_SUSPEND_SECCOMP), which the kernel
    refuses to a tracer under seccomp itself (ptrace(2)) - even the permissive denylist used here.
    The DaemonSet's `seccompProfile: Unconfined` rests on this test.
    """
    confined = agents.start("node-seccomp", "127.0.0.4", seccomp=WORKER_SECCOMP)
    try:
        launch_worker(confined, "w-seccomp", tmp_path)
        job = confined.client.wait(confined.client.snapshot("w-seccomp", "never-published", leave_running=True).id, 120)
        assert job.state.value == "failed"
        assert "suspending seccomp failed: Operation not permitted" in job.error.message
        assert confined.client.worker("w-seccomp").alive  # a failed snapshot leaves the worker running
    finally:
        confined.stop()
        del agents.by_node["node-seccomp"]
