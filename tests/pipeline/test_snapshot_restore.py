"""Snapshot and restore for real: a warmed worker's memory, open files and post-thaw sockets survive."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from thaw import pipeline
from thaw.config import Settings
from thaw.pipeline import Restored
from thaw.store import Store
from workers import client, processes_of, state

pytestmark = pytest.mark.criu


def warm_token(log: Path) -> str:
    """The random token the worker generated during warm-up (it logs it before parking)."""
    [line] = [line for line in log.read_text().splitlines() if line.startswith("warm ")]
    return line.split()[1]


def test_a_restored_worker_has_its_state_its_log_file_and_serves(settings: Settings, store: Store,
                                                                   launch_worker, tmp_path: Path) -> None:
    original = launch_worker()
    token = warm_token(tmp_path / "w.data.log")

    snap = pipeline.snapshot(settings, "w", "a1", store=store)

    assert not original.alive()  # snapshotted without --leave-running: the original is gone
    assert pipeline.find(settings, original.id).state == "snapshotted"
    assert snap.manifest.worker.canary is not None
    restored = pipeline.restore(settings, "a1", store=store, name="copy")
    got = state(restored.instance.dir)
    # in-memory state: the token and the table built from it during warm-up
    assert got["token"] == token
    assert {"digest": got["digest"]} == snap.manifest.worker.canary
    assert got["outcome"] == "thawed"
    assert got["info"]["artifact"] == "a1" and got["info"]["restore_id"] == restored.instance.id
    assert got["info"]["canary"] == "passed" and restored.canary_checked
    assert got["hooks"] == ["freeze:snapshot", "thaw:thaw"]
    # the log file opened before the snapshot is still open, at its end
    with client(restored.instance.dir) as http:
        assert http.post("/log", content="written after restore").json() == {"ok": True}
        assert http.post("/incr").json() == {"counter": 1}
    assert (tmp_path / "w.data.log").read_text().splitlines() == [f"warm {token}", "written after restore"]
    # the restored copy is pid 1 of new namespaces, known to thaw as a running instance
    assert got["pid"] == 1
    inst = pipeline.find(settings, "copy")
    assert (inst.id, inst.state, inst.origin, inst.artifact, inst.owner_pid) == (
        restored.instance.id, "running", "restored", "a1", 0)
    assert inst.alive() and processes_of(settings.home) == [inst.host_pid]


def test_two_restores_of_one_artifact_at_the_same_time_both_answer(settings: Settings, store: Store,
                                                                   launch_worker) -> None:
    launch_worker()
    pipeline.snapshot(settings, "w", "a1", store=store)
    results: dict[str, Restored] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def restore(name: str) -> None:
        start.wait()
        try:
            results[name] = pipeline.restore(settings, "a1", store=store, name=name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=restore, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert not errors, errors
    one, two = (results[n].instance for n in ("one", "two"))
    assert one.host_pid != two.host_pid and one.pidns != two.pidns and one.dir != two.dir
    a, b = state(one.dir), state(two.dir)
    assert a["token"] == b["token"] and a["digest"] == b["digest"]
    # two processes, not one: their counters move apart
    with client(one.dir) as http:
        http.post("/incr")
        http.post("/incr")
    with client(two.dir) as http:
        assert http.post("/incr").json() == {"counter": 1}
    assert state(one.dir)["counter"] == 2


def test_leave_running_keeps_the_original_serving(settings: Settings, store: Store, launch_worker) -> None:
    original = launch_worker()

    snap = pipeline.snapshot(settings, "w", "a1", store=store, leave_running=True)

    assert original.alive()
    assert "resume_original" in snap.timings.flat()
    served = state(original.dir)
    assert served["outcome"] == "released" and served["info"]["artifact"] == "a1"
    assert served["hooks"] == ["freeze:snapshot", "thaw:release"]  # the freeze was undone before it serves
    copy = pipeline.restore(settings, "a1", store=store, name="copy")
    assert state(copy.instance.dir)["token"] == served["token"]
    assert state(original.dir)["outcome"] == "released"  # the original still answers


def test_a_copy_of_a_worker_caught_mid_poll_answers_its_restore_not_the_originals_release(
        settings: Settings, store: Store, launch_worker) -> None:
    """CRIU stops the worker wherever it is, e.g. holding the original's sandbox key, about to read the original's
    control directory; after --leave-running thaw tells the original RELEASE there. Before the fix the copy acted
    on it (CI, tests/gms/test_gms_snapshot.py: one copy died, the other never answered THAW). The worker here
    stalls after each key look-up while frozen, so the dump lands in that window nearly every time."""
    original = launch_worker(TEST_STALL_WHILE_FROZEN="0.5")
    pipeline.snapshot(settings, "w", "a1", store=store, leave_running=True)

    copy = pipeline.restore(settings, "a1", store=store, name="copy", reply_timeout=30)

    got = state(copy.instance.dir)
    assert got["outcome"] == "thawed" and got["info"]["restore_id"] == copy.instance.id
    assert got["hooks"] == ["freeze:snapshot", "thaw:thaw"]  # undone as a thaw, not as the original's release
    served = state(original.dir)
    assert served["outcome"] == "released" and served["hooks"] == ["freeze:snapshot", "thaw:release"]


def test_a_restored_worker_can_be_snapshotted_and_restored_again(settings: Settings, store: Store,
                                                                launch_worker) -> None:
    launch_worker()
    pipeline.snapshot(settings, "w", "gen1", store=store)
    first = pipeline.restore(settings, "gen1", store=store, name="gen1-copy")
    token = state(first.instance.dir)["token"]
    with client(first.instance.dir) as http:
        http.post("/incr")
        assert http.post("/park").json() == {"ok": True}  # back to its quiesce point
    pipeline.wait_ready(settings, first.instance, timeout=10)

    pipeline.snapshot(settings, "gen1-copy", "gen2", store=store)
    second = pipeline.restore(settings, "gen2", store=store, name="gen2-copy")

    assert not first.instance.alive()
    got = state(second.instance.dir)
    # each copy's stdout goes to its own log, also after the worker reopened it inside its sandbox
    assert "(thawed)" in first.instance.log.read_text()
    assert "(thawed)" in second.instance.log.read_text()
    assert got["token"] == token
    assert got["counter"] == 0  # the counter belongs to a serving session that ended when it parked
    assert got["outcome"] == "thawed" and got["info"]["artifact"] == "gen2"
    assert store.manifest("gen2").worker.canary == store.manifest("gen1").worker.canary

