"""An agent SIGKILLed mid-job: after restart the job reads failed with the phase, nothing half-done is left."""

from __future__ import annotations

import pytest
from agent_nodes import launch_worker, wait_phase
from workers import wait_until

pytestmark = pytest.mark.criu


def _staging_debris(node) -> list:
    shared = node.root.parent / "shared" / ".staging"
    return sorted(shared.iterdir()) if shared.exists() else []


@pytest.mark.parametrize("when, env", [
    (("freeze_hooks",), {"AGENT_TEST_FREEZE_SLEEP": "3"}),           # the worker is frozen, nothing written yet
    (("dump", "publish"), {"AGENT_TEST_BALLAST_MIB": "768"}),         # CRIU is writing the artifact
], ids=["during-freeze", "during-dump"])
def test_agent_killed_during_a_snapshot(make_node, when, env):
    node = make_node("a")
    worker = launch_worker(node, "w1", **env)
    with node.client() as c:
        job = c.snapshot("w1", "w1-v1")
    phase = wait_phase(node, job.id, when, timeout=60)
    node.kill()
    node.start()

    with node.client() as c:
        after = c.job(job.id)
        assert after.state.value == "failed"
        assert after.error.reason == "agent_restarted"
        assert after.error.message.startswith("agent restarted during ")
        assert after.error.detail["phase"] in when and after.error.detail["phase"] in after.error.message
        assert c.artifacts() == [], "no partial artifact is listed"
        assert _staging_debris(node) == [], "the staged files were removed"
        assert "the worker was told to ABORT and is parked again" in after.error.message

        # the original is still running, parked at its quiesce point, and can be snapshotted again
        w = wait_until(lambda: (x := c.worker(worker.id)).parked and x, 30, "the worker to be parked again")
        assert w.alive and w.busy is None
        again = c.wait(c.snapshot(worker.id, "w1-v1", leave_running=True).id, timeout=180)
        assert again.state.value == "succeeded", again.error
    state = node.worker_state(worker.control_dir)
    assert "thaw:abort" in state["hooks"], "recovery undid the freeze (thaw hooks ran with reason abort)"
    assert phase in when


def test_agent_killed_while_uploading_to_s3(make_node, s3_url, tmp_path):
    """Killed mid-upload: the manifest never lands, and recovery removes the files and open multipart uploads."""
    from thaw.store.s3 import S3Store

    bucket, _, query = s3_url[len("s3://"):].partition("?")
    url = f"s3://{bucket}/{tmp_path.name}?{query}&chunk_mib=8&workers=2"
    node = make_node("a", store=url)
    worker = launch_worker(node, "w1", AGENT_TEST_BALLAST_MIB="512")
    with node.client() as c:
        job = c.snapshot("w1", "w1-v1")
    wait_phase(node, job.id, ("publish",), timeout=60)
    s3 = S3Store.from_url(url)
    wait_until(lambda: s3._client.list_objects_v2(Bucket=bucket, Prefix=s3.prefix).get("KeyCount"), 30,
               "the upload to start")
    node.kill()
    node.start()

    with node.client() as c:
        after = c.job(job.id)
        assert after.error.reason == "agent_restarted" and "during publish" in after.error.message
        assert "staged files removed" in after.error.message
        assert c.artifacts() == []
        assert wait_until(lambda: c.worker(worker.id).parked, 30, "the worker to be parked again")
    assert s3._client.list_objects_v2(Bucket=bucket, Prefix=s3.prefix).get("KeyCount") == 0
    assert s3._client.list_multipart_uploads(Bucket=bucket, Prefix=s3.prefix).get("Uploads", []) == []
    # the local copy is gone (the scratch directory, where uploads are staged, stays: empty)
    assert [e.name for e in node.staging.iterdir()] in ([], [".scratch"])
    assert not list((node.staging / ".scratch").glob("*")), "the local copy is gone"


def test_agent_killed_during_a_restore(make_node):
    a, b = make_node("a"), make_node("b")
    original = launch_worker(a, "w1", AGENT_TEST_THAW_SLEEP="20")
    with a.client() as ca:
        assert ca.wait(ca.snapshot("w1", "w1-v1", leave_running=True).id, timeout=120).state.value == "succeeded"
    served = a.worker_state(original.control_dir)

    with b.client() as cb:
        job = cb.restore("w1-v1", name="copy")
    wait_phase(b, job.id, ("thaw_hooks",), timeout=60)  # the copy runs and sleeps in its thaw hook
    with b.client() as cb:
        [copy] = [w for w in cb.workers() if w.name == "copy"]
        assert copy.alive and not copy.ready, "not ready before its canary passed"
    b.kill()
    b.start()

    with b.client() as cb:
        after = cb.job(job.id)
        assert after.state.value == "failed" and after.error.reason == "agent_restarted"
        assert after.error.message.startswith("agent restarted during thaw_hooks")
        assert f"the half-restored worker {copy.id} was killed" in after.error.message
        gone = cb.worker(copy.id)
        assert not gone.alive and not gone.ready and gone.state == "failed"
        assert cb.workers() == []
        assert [x.name for x in cb.artifacts()] == ["w1-v1"], "the artifact is kept"
        assert list(b.staging.iterdir()) == []
    with a.client() as ca:
        assert ca.worker(original.id).alive
    assert a.worker_state(original.control_dir)["token"] == served["token"], "the original still answers"


def test_agent_start_leaves_a_live_restore_s_staging_alone(make_node, tmp_path):
    """Before: the agent emptied node staging at start, also a `thaw restore --local` copy being fetched there."""
    import os

    from thaw.store.confined import new_private_dir

    node = make_node("a", start=False)
    node.staging.mkdir(parents=True, exist_ok=True)
    live = new_private_dir(node.staging, prefix="a1.0123abcd.")  # owned by this (live) process
    dead = node.staging / f"{live.name.split('-', 2)[0]}-999999999-1.a1.dead.x"  # a pid that cannot run
    dead.mkdir()
    node.start()

    assert live.is_dir() and not dead.exists()
    os.rmdir(live)
