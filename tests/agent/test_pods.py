"""The agent's side of pods: which GPU a pod was given (the device plugin's choice, not the agent's)."""

from thaw.agent.pods import gpu_in


def test_the_pods_gpu_is_the_one_uuid_the_device_plugin_named():
    assert gpu_in("GPU-5d1c9b2e-aaaa-bbbb-cccc-0123456789ab") == "GPU-5d1c9b2e-aaaa-bbbb-cccc-0123456789ab"
    assert gpu_in(" MIG-1234 ") == "MIG-1234"


def test_no_single_gpu_no_choice():
    assert gpu_in("") is None  # a CPU node: nothing to choose
    assert gpu_in("all") is None and gpu_in("void") is None and gpu_in("0") is None  # not a pod's allocation
    assert gpu_in("GPU-a,GPU-b") is None  # several: the worker restores onto the GPUs it recorded


def test_a_retried_start_with_the_same_idempotency_key_returns_the_first_job(tmp_path):
    import pytest

    from thaw.agent.models import JobKind, RestoreRequest, SnapshotRequest
    from thaw.agent.service import Agent, AgentConfig
    from thaw.config import Settings
    from thaw.errors import BusyError

    agent = Agent(AgentConfig(settings=Settings(home=tmp_path / "home", store=str(tmp_path / "store"))))
    try:
        first = agent.book.create(JobKind.RESTORE, worker="w", artifact="a", request={}, caller={}, node="n",
                                  key="uid-1")
        # the operator lost the answer and asks again: the same job, not a 409 and not a second restore
        again = agent.submit_restore(RestoreRequest(artifact="a", name="w", idempotency_key="uid-1"), {})
        assert again.id == first.id and len(agent.book.list()) == 1
        # a key names one request: reused for another, it is refused, saying what it started
        with pytest.raises(BusyError, match=f"started a restore of 'a' \\(job {first.id}\\)"):
            agent.submit_snapshot(SnapshotRequest(worker="w", artifact="b", idempotency_key="uid-1"), {})
        # a job and its key are written together: a second job under a taken key leaves no job behind
        with pytest.raises(Exception, match="UNIQUE"):
            agent.book.create(JobKind.RESTORE, worker="w", artifact="a", request={}, caller={}, node="n", key="uid-1")
        assert len(agent.book.list()) == 1
    finally:
        agent.close()
