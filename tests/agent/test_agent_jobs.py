"""Jobs on one node: one operation per worker, parallel restores, and the canary gate."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from agent_nodes import launch_worker, wait_phase

from thaw.errors import AgentError

pytestmark = pytest.mark.criu


def test_two_snapshots_of_one_worker_one_runs_the_other_gets_409(make_node):
    node = make_node("a")
    launch_worker(node, "w1", AGENT_TEST_FREEZE_SLEEP="1")

    def submit(artifact: str):
        with node.client() as c:
            try:
                return c.snapshot("w1", artifact)
            except AgentError as exc:
                return exc

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(submit, ["snap-1", "snap-2"]))
    accepted = [o for o in outcomes if not isinstance(o, AgentError)]
    refused = [o for o in outcomes if isinstance(o, AgentError)]
    assert len(accepted) == 1 and len(refused) == 1, outcomes
    assert refused[0].status == 409 and refused[0].reason == "busy"
    assert f"snapshot (job {accepted[0].id}) is running on it" in refused[0].message

    with node.client() as c:
        assert c.worker("w1").busy == accepted[0].id
        job = c.wait(accepted[0].id, timeout=120)
        assert job.state.value == "succeeded", job.error
        assert [a.name for a in c.artifacts()] == [job.artifact]
        # the worker was stopped by its snapshot: a new operation on it finds it gone
        with pytest.raises(AgentError) as info:
            c.snapshot("w1", "snap-3")
        assert info.value.status == 404 and "not running" in info.value.message


def test_restores_of_different_artifacts_run_in_parallel(make_node):
    node = make_node("a")
    with node.client() as c:
        for name in ("x", "y"):
            launch_worker(node, name, AGENT_TEST_THAW_SLEEP="2")
            job = c.wait(c.snapshot(name, f"art-{name}").id, timeout=120)
            assert job.state.value == "succeeded", job.error
        jobs = [c.restore("art-x"), c.restore("art-y")]
        wait_phase(node, jobs[0].id, ("thaw_hooks",))
        wait_phase(node, jobs[1].id, ("thaw_hooks",))  # both are restoring at once
        done = [c.wait(j.id, timeout=120) for j in jobs]
    assert all(j.state.value == "succeeded" for j in done), [j.error for j in done]
    (s1, f1), (s2, f2) = [(j.started_at, j.finished_at) for j in done]
    assert s1 < f2 and s2 < f1, "the two restores overlapped in time"
    assert (max(f1, f2) - min(s1, s2)).total_seconds() < 2 * 2.0, "together faster than one after the other"


def test_canary_mismatch_kills_the_copy_keeps_the_artifact_and_says_why(make_node):
    node = make_node("a")
    original = launch_worker(node, "drifty", AGENT_TEST_PERTURB="1")
    with node.client() as c:
        snap = c.wait(c.snapshot("drifty", "drifty-v1", leave_running=True).id, timeout=120)
        assert snap.state.value == "succeeded", snap.error
        job = c.wait(c.restore("drifty-v1", name="drifty-copy").id, timeout=120)

        assert job.state.value == "failed"
        err = job.error
        assert err.reason == "canary_mismatch"
        assert "does not reproduce the canary" in err.message
        assert err.detail["differences"][0].startswith("$.digest: expected '")
        assert err.detail["expected"] != err.detail["got"]
        assert (err.detail["restored_worker"], err.detail["artifact"]) == ("killed", "kept")

        [copy] = [w for w in c.workers(include_gone=True) if w.name == "drifty-copy"]
        assert not copy.alive and not copy.ready and copy.state == "failed"
        assert [a.name for a in c.artifacts()] == ["drifty-v1"]
        verify = c.wait(c.verify("drifty-v1").id, timeout=60)
        assert verify.state.value == "succeeded" and verify.result.digest == snap.result.digest
        assert c.worker(original.id).alive
        metrics = c.metrics()
    assert 'thaw_canary_checks_total{result="mismatch"} 1.0' in metrics
    assert 'thaw_failures_total{operation="restore",reason="canary_mismatch"} 1.0' in metrics
    lines = (node.root / "agent" / "audit.log").read_text().splitlines()
    assert any('"outcome": "failed"' in line and '"reason": "canary_mismatch"' in line for line in lines)


def test_delete_waits_for_restores_of_the_artifact(make_node):
    node = make_node("a")
    launch_worker(node, "slow", AGENT_TEST_THAW_SLEEP="2")
    with node.client() as c:
        assert c.wait(c.snapshot("slow", "slow-v1").id, timeout=120).state.value == "succeeded"
        job = c.restore("slow-v1")
        wait_phase(node, job.id, ("thaw_hooks",))
        with pytest.raises(AgentError) as info:
            c.delete("slow-v1")
        assert info.value.status == 409 and "in use" in info.value.message
        assert c.wait(job.id, timeout=120).state.value == "succeeded"
        c.delete("slow-v1")
        assert c.artifacts() == []
