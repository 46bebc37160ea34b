"""WorkerSnapshot reconciliation, step by step, against in-memory fakes (no cluster needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from thaw.errors import BusyError, ConfigError
from thaw.k8s import snapshots
from thaw.k8s.status import condition
from thaw.store.manifest import check_name

from .fakes import Agents, FakeAgent, FakeCluster, node, pod, snapshot

T0 = datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC)
A = "http://127.0.0.2:7070"


def world(*pods, agent_down=False):
    agent = FakeAgent(A)
    agent.down = agent_down
    cluster = FakeCluster(nodes=[node("node-a", product="NVIDIA-H200", gpus=8, agent=A), node("node-b", gpus=0)],
                          pods=list(pods))
    return cluster, agent, Agents(agent)


def advance(body, step):
    """The object as the next reconcile sees it: status merged (what kopf's patch does)."""
    body = dict(body)
    body["status"] = {**(body.get("status") or {}), **step.status}
    return body


def test_the_http_canary_of_the_spec_reaches_the_agent():
    cluster, agent, connect = world(pod("worker-0"))
    canary = [{"prompt": "Hello", "max_tokens": 8}, {"method": "GET", "path": "/health"}]
    snapshots.reconcile(snapshot(canaryHttp=canary), cluster, connect, now=T0)
    assert agent.jobs["job-1"]["request"]["canary_http"] == canary
    snapshots.reconcile(snapshot("plain"), cluster, connect, now=T0)
    assert agent.jobs["job-2"]["request"]["canary_http"] is None, "no canary: the agent's default"


def test_starts_a_snapshot_job_on_the_pods_node_with_the_worker_named_by_the_pod():
    cluster, agent, connect = world(pod("worker-0", annotations={"thaw.dev/worker": "llm"}))
    step = snapshots.reconcile(snapshot(), cluster, connect, now=T0)
    assert agent.calls == [("snapshot", "llm", "ml.snap", True)]
    assert step.status["phase"] == "Snapshotting"
    assert step.status["node"] == "node-a" and step.status["agentJob"] == "job-1"
    assert condition(step.status["conditions"], "Ready")["reason"] == "Snapshotting"
    assert [e.reason for e in step.events] == ["SnapshotStarted"]
    assert step.retry_in is None


def test_waits_for_a_pod_that_is_missing_unbound_or_not_running_and_says_so_once():
    cluster, agent, connect = world(pod("worker-0", node=None))
    step = snapshots.reconcile(snapshot(), cluster, connect, now=T0)
    assert step.status["phase"] == "Pending"
    assert condition(step.status["conditions"], "Ready")["reason"] == "PodNotScheduled"
    assert [e.reason for e in step.events] == ["PodNotScheduled"]
    again = snapshots.reconcile(advance(snapshot(), step), cluster, connect, now=T0)
    assert again.events == []  # same reason: no second Event
    cluster.pods.clear()
    gone = snapshots.reconcile(advance(snapshot(), step), cluster, connect, now=T0)
    assert condition(gone.status["conditions"], "Ready")["reason"] == "PodNotFound"
    assert agent.calls == []


def test_gives_up_waiting_after_timeout():
    cluster, _agent, connect = world()
    late = T0 + timedelta(seconds=1801)
    step = snapshots.reconcile(snapshot(), cluster, connect, now=late)
    assert step.status["phase"] == "Failed"
    assert condition(step.status["conditions"], "Ready")["reason"] == "Timeout"
    assert [e.type for e in step.events] == ["Warning"]


def test_unreachable_agent_is_retried_with_growing_back_off_and_one_warning():
    cluster, _agent, connect = world(pod("worker-0"), agent_down=True)
    first = snapshots.reconcile(snapshot(), cluster, connect, retry=0, now=T0)
    assert first.retry_in == 1.0
    assert condition(first.status["conditions"], "AgentReachable")["status"] == "False"
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "AgentUnreachable")]
    second = snapshots.reconcile(advance(snapshot(), first), cluster, connect, retry=3, now=T0)
    assert second.retry_in == 8.0 and second.events == []
    # still Pending, and kubectl get says so: phase, node, a Ready condition, and why on every retry
    assert (second.status["phase"], second.status["node"]) == ("Pending", "node-a")
    assert condition(second.status["conditions"], "Ready")["status"] == "False"
    assert "connection refused (retry 4)" in second.status["message"]
    third = snapshots.reconcile(advance(snapshot(), second), cluster, connect, retry=4, now=T0)
    assert "connection refused (retry 5)" in third.status["message"]


def test_an_agent_that_answers_again_is_announced_when_the_snapshot_starts():
    cluster, agent, connect = world(pod("worker-0"), agent_down=True)
    down = snapshots.reconcile(snapshot(), cluster, connect, now=T0)
    agent.down = False
    up = snapshots.reconcile(advance(snapshot(), down), cluster, connect, retry=1, now=T0)
    assert up.status["phase"] == "Snapshotting"
    assert condition(up.status["conditions"], "AgentReachable")["status"] == "True"
    assert [e.reason for e in up.events] == ["AgentReachable", "SnapshotStarted"]
    # the object's uid is the idempotency key of the job start
    assert agent.jobs["job-1"]["request"]["key"] == "uid-snap"


def test_a_node_without_agent_is_a_temporary_failure():
    cluster, _agent, connect = world(pod("worker-0", node="node-b"))
    step = snapshots.reconcile(snapshot(), cluster, connect, now=T0)
    assert step.retry_in is not None and "no thaw agent found for node node-b" in step.message


def test_a_busy_worker_is_waited_for():
    cluster, agent, connect = world(pod("worker-0"))
    agent.fail_next = BusyError("worker llm is busy with job job-9")
    step = snapshots.reconcile(snapshot(), cluster, connect, now=T0)
    assert step.retry_in is not None
    assert condition(step.status["conditions"], "Ready")["reason"] == "AgentBusy"


def test_a_rejected_request_fails_for_good():
    cluster, agent, connect = world(pod("worker-0"))
    agent.fail_next = ConfigError("worker name", "'X' is not a valid name")
    step = snapshots.reconcile(snapshot(), cluster, connect, now=T0)
    assert step.status["phase"] == "Failed" and step.retry_in is None
    assert condition(step.status["conditions"], "Ready")["reason"] == "AgentRejected"


def test_follows_the_job_to_ready_and_records_the_artifact():
    cluster, agent, connect = world(pod("worker-0"))
    body = advance(snapshot(), snapshots.reconcile(snapshot(), cluster, connect, now=T0))
    agent.jobs["job-1"]["progress"] = {"phase": "dump", "fraction": 0.5, "detail": "pages"}
    running = snapshots.reconcile(body, cluster, connect, now=T0 + timedelta(seconds=2))
    assert running.status == {"progress": "dump 50% pages"}
    agent.finish("job-1", {"artifact": "ml.snap", "artifact_id": "abc", "digest": "xxh3_128:ff", "bytes": 3 << 30,
                           "timings": {"dump": 1.5, "publish": 0.5}, "original": "running"})
    agent.artifacts["ml.snap"] = {"name": "ml.snap", "gpus": [{"name": "NVIDIA H200", "uuid": "GPU-1",
                                                               "used_bytes": 70 << 30}],
                                  "worker": {"name": "worker-0", "canary": [1, 2, 3]}}
    done = snapshots.reconcile(advance(body, running), cluster, connect, now=T0 + timedelta(seconds=9))
    assert done.status["phase"] == "Ready"
    assert done.status["artifact"] == {"name": "ml.snap", "id": "abc", "digest": "xxh3_128:ff",
                                       "sizeBytes": 3 << 30, "size": "3.0GiB", "gpuCount": 1,
                                       "gpuProduct": "NVIDIA H200", "gpuMemoryBytes": 70 << 30, "hasCanary": True}
    assert done.status["timings"] == {"dump": 1.5, "publish": 0.5}
    assert done.status["duration"] == "9.0s"
    assert condition(done.status["conditions"], "Ready")["status"] == "True"
    assert [e.reason for e in done.events] == ["SnapshotReady"]
    assert snapshots.reconcile(advance(body, done), cluster, connect).status == {}  # terminal: nothing more


def test_a_failed_job_fails_the_snapshot_with_the_agents_reason():
    cluster, agent, connect = world(pod("worker-0"))
    body = advance(snapshot(), snapshots.reconcile(snapshot(), cluster, connect, now=T0))
    agent.fail("job-1", "quiesce_timeout", "worker never parked")
    step = snapshots.reconcile(body, cluster, connect, now=T0)
    assert step.status["phase"] == "Failed"
    ready = condition(step.status["conditions"], "Ready")
    assert ready["reason"] == "SnapshotQuiesceTimeout" and "worker never parked" in ready["message"]
    assert [(e.type, e.reason) for e in step.events] == [("Warning", "SnapshotQuiesceTimeout")]


def test_a_job_the_agent_forgot_is_lost_and_a_slow_one_times_out():
    cluster, agent, connect = world(pod("worker-0"))
    body = advance(snapshot(), snapshots.reconcile(snapshot(), cluster, connect, now=T0))
    slow = snapshots.reconcile(body, cluster, connect, now=T0 + timedelta(seconds=1801))
    assert condition(slow.status["conditions"], "Ready")["reason"] == "Timeout"
    agent.jobs.clear()  # e.g. the agent's job book was wiped
    lost = snapshots.reconcile(body, cluster, connect, now=T0)
    assert condition(lost.status["conditions"], "Ready")["reason"] == "JobLost"


def test_agent_down_while_following_then_back():
    cluster, agent, connect = world(pod("worker-0"))
    body = advance(snapshot(), snapshots.reconcile(snapshot(), cluster, connect, now=T0))
    agent.down = True
    down = snapshots.reconcile(body, cluster, connect, now=T0)
    assert down.retry_in and "phase" not in down.status
    agent.down = False
    back = snapshots.reconcile(advance(body, down), cluster, connect, now=T0)
    assert condition(back.status["conditions"], "AgentReachable")["status"] == "True"
    assert [e.reason for e in back.events] == ["AgentReachable"]


def test_default_artifact_names_are_valid_thaw_names_even_for_long_object_names():
    assert snapshots.default_artifact("ml", "llama.v3") == "ml.llama.v3"
    long = snapshots.default_artifact("n" * 63, "x" * 253)
    assert len(long) <= 128 and check_name(long)
    assert long != snapshots.default_artifact("n" * 63, "x" * 252 + "y")


# --- deletion --------------------------------------------------------------------------------------------------

def ready(**spec):
    return snapshot(status={"phase": "Ready", "node": "node-a", "artifact": {"name": "ml.snap"}}, **spec)


def test_deleting_a_ready_snapshot_deletes_its_artifact():
    cluster, agent, connect = world()
    agent.artifacts["ml.snap"] = {}
    step = snapshots.finalize(ready(), cluster, connect)
    assert ("delete_artifact", "ml.snap") in agent.calls and step.retry_in is None
    assert [e.reason for e in step.events] == ["ArtifactDeleted"]
    again = snapshots.finalize(ready(), cluster, connect)  # already gone: fine
    assert again.retry_in is None and "already gone" in again.events[0].message


def test_retain_keeps_the_artifact():
    cluster, agent, connect = world()
    step = snapshots.finalize(ready(retention="Retain"), cluster, connect)
    assert agent.calls == [] and [e.reason for e in step.events] == ["ArtifactRetained"]


def test_deletion_uses_any_agent_when_the_snapshot_node_is_gone_and_retries_when_none_answers():
    cluster, agent, connect = world()
    agent.artifacts["ml.snap"] = {}
    body = ready()
    body["status"]["node"] = "node-gone"
    assert snapshots.finalize(body, cluster, connect).retry_in is None
    assert ("delete_artifact", "ml.snap") in agent.calls
    agent.down = True
    assert snapshots.finalize(body, cluster, connect, retry=2).retry_in == 4.0


def test_deletion_waits_for_a_running_snapshot_then_deletes_what_it_published():
    cluster, agent, connect = world(pod("worker-0"))
    body = advance(snapshot(), snapshots.reconcile(snapshot(), cluster, connect, now=T0))
    assert snapshots.finalize(body, cluster, connect).retry_in is not None
    agent.finish("job-1", {"artifact": "ml.snap"})
    agent.artifacts["ml.snap"] = {}
    assert snapshots.finalize(body, cluster, connect).retry_in is None
    assert "ml.snap" not in agent.artifacts


def test_deleting_a_failed_snapshot_touches_nothing():
    cluster, agent, connect = world()
    step = snapshots.finalize(snapshot(status={"phase": "Failed"}), cluster, connect)
    assert agent.calls == [] and step.events == []


def test_status_text_is_cut_to_what_the_crd_accepts():
    from thaw.k8s.status import fit_status

    long = "criu log tail\n" * 1000
    fitted = fit_status({"message": long, "progress": "p" * 300, "phase": "Failed"})
    assert len(fitted["message"]) <= 4096 and fitted["message"].endswith("(cut)")
    assert len(fitted["progress"]) <= 256 and fitted["phase"] == "Failed"
