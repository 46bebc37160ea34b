"""The kopf adapters: a Step becomes pod patch, Events, status patch and kopf's retry, in that order."""

from __future__ import annotations

import kopf
import pytest

from thaw.k8s import handlers
from thaw.k8s.config import OperatorConfig
from thaw.k8s.status import PodPatch, Step


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def patch_pod(self, patch: PodPatch) -> None:
        self.calls.append(("pod", patch.annotations["thaw.dev/restore-state"]))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> tuple[Recorder, handlers.Memo]:
    rec = Recorder()
    monkeypatch.setattr(kopf, "event", lambda obj, *, type, reason, message: rec.calls.append(("event", reason)))
    return rec, handlers.Memo(cluster=rec, connect=None, config=OperatorConfig(), kube_config=None)


def test_a_step_writes_the_pod_first_then_events_then_status(recorded):
    rec, memo = recorded
    patch = kopf.Patch()
    step = Step(status={"phase": "Ready", "message": "x" * 5000},
                pod=PodPatch("ml", "p", {"thaw.dev/restore-state": "Restored"}))
    step.event("Normal", "Restored", "done")
    handlers.apply(step, {"metadata": {"name": "r"}}, patch, memo)
    assert rec.calls == [("pod", "Restored"), ("event", "Restored")]
    assert patch["status"]["phase"] == "Ready" and len(patch["status"]["message"]) <= 4096


def test_a_step_that_asks_to_retry_raises_kopfs_temporary_error_after_writing_its_status(recorded):
    _rec, memo = recorded
    patch = kopf.Patch()
    step = Step(status={"conditions": []}, retry_in=8.0, message="agent on node-a: connection refused")
    with pytest.raises(kopf.TemporaryError) as info:
        handlers.apply(step, {"metadata": {"name": "s"}}, patch, memo)
    assert info.value.delay == 8.0 and "connection refused" in str(info.value)
    assert patch["status"] == {"conditions": []}  # kopf applies a timer's patch even when it retries


def test_timers_run_only_while_an_object_is_in_progress():
    # (that register() wires every handler is shown by the end-to-end tests, which run the real operator)
    assert handlers.in_progress(body={"status": {"phase": "Snapshotting"}})
    assert handlers.in_progress(body={})
    assert not handlers.in_progress(body={"status": {"phase": "Ready"}})
