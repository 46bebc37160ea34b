"""What users rely on when things go wrong: the worker survives a failed snapshot, a failed restore leaves
nothing behind, a damaged artifact is refused before anything runs, and every wait ends with a clear error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from thaw import pipeline
from thaw.config import Settings
from thaw.errors import (BusyError, CanaryMismatch, CheckpointError, IntegrityError, QuiesceTimeout, RestoreError,
                         WorkerError)
from thaw.store import Store
from workers import processes_of, state

pytestmark = pytest.mark.criu


def staging_debris(store: Store) -> list[str]:
    return os.listdir(Path(store.root) / ".staging")


def test_a_failed_dump_leaves_the_worker_usable_and_publishes_nothing(settings: Settings, store: Store,
                                                                      launch_worker, outside_server: Path) -> None:
    # a connected unix socket to a peer outside the sandbox: CRIU refuses to dump it
    original = launch_worker(TEST_HOLD_SOCKET=str(outside_server))

    with pytest.raises(CheckpointError) as failed:
        pipeline.snapshot(settings, "w", "a1", store=store)

    message = str(failed.value)
    # one error naming the socket and the fix (before: CRIU's log tail, which names neither)
    assert failed.value.message == (f"snapshot of 'w' failed: it holds a unix socket connected to {outside_server}, "
                                    "outside its sandbox; CRIU cannot snapshot that (External socket is used)")
    assert failed.value.hint.startswith("open sockets after thaw.worker.quiesce() returns")
    assert "RLIMIT_NOFILE" not in message
    assert not store.exists("a1") and store.list() == []
    assert staging_debris(store) == []
    # the original is alive and still parked (its freeze undone), so it can be released and serve
    assert original.alive()
    assert pipeline.find(settings, "w").state == "running"
    pipeline.release(settings, "w")
    served = state(original.dir)
    assert served["outcome"] == "released"
    assert served["hooks"] == ["freeze:snapshot", "thaw:abort"]


def test_a_tcp_socket_opened_before_quiesce_is_named_before_anything_is_frozen(settings: Settings, store: Store,
                                                                             launch_worker) -> None:
    """Before: CRIU's raw text ("sockets: Can't get 1:16 opt: Operation not supported" on Linux >= 6.16,
    criu#2705, or a hint to use --tcp-established, which thaw has no option for), after the freeze."""
    original = launch_worker(TEST_HOLD_TCP="8123")

    with pytest.raises(CheckpointError) as refused:
        pipeline.snapshot(settings, "w", "a1", store=store)

    assert refused.value.message.startswith("snapshot of 'w' refused: it holds a socket CRIU cannot snapshot: "
                                            "TCP 127.0.0.1:8123 (listening; pid ")
    assert refused.value.hint.startswith("open sockets after thaw.worker.quiesce() returns")
    assert store.list() == [] and staging_debris(store) == []
    pipeline.release(settings, "w")
    assert state(original.dir)["hooks"] == []  # never frozen: no freeze (or thaw) hook ran


def test_a_failed_freeze_hook_fails_the_snapshot_and_the_worker_stays_parked(settings: Settings, store: Store,
                                                                            launch_worker) -> None:
    original = launch_worker(TEST_FREEZE_FAIL="1")

    with pytest.raises(CheckpointError, match="failed in its freeze hooks: .*freeze hook failed on purpose"):
        pipeline.snapshot(settings, "w", "a1", store=store)

    assert original.alive() and original.ready() is not None
    assert store.list() == [] and staging_debris(store) == []


def test_a_snapshot_of_a_worker_that_never_quiesces_times_out(settings: Settings, store: Store,
                                                             launch_worker) -> None:
    worker = launch_worker(ready=False, TEST_NO_QUIESCE="1")

    with pytest.raises(QuiesceTimeout) as timed_out:
        pipeline.snapshot(settings, "w", "a1", store=store, ready_timeout=1.0)

    assert "worker 'w' did not reach its quiesce point within 1s" in str(timed_out.value)
    assert "thaw.worker.quiesce()" in timed_out.value.hint
    assert worker.alive()  # left alone: it may just be slow
    assert store.list() == []


def test_a_worker_that_dies_before_its_quiesce_point_is_reported_with_its_log(settings: Settings, store: Store,
                                                                             launch_worker, tmp_path: Path) -> None:
    worker = launch_worker(ready=False, TEST_LOG=str(tmp_path / "no" / "such" / "dir.log"))

    with pytest.raises(WorkerError, match="exited before reaching its quiesce point") as died:
        pipeline.snapshot(settings, "w", "a1", store=store, ready_timeout=30)

    assert "FileNotFoundError" in died.value.hint  # the worker's own last words
    assert not worker.alive()


def test_an_artifact_name_in_use_is_refused_before_the_worker_is_touched(settings: Settings, store: Store,
                                                                        launch_worker) -> None:
    launch_worker()
    pipeline.snapshot(settings, "w", "a1", store=store, leave_running=True)
    second = launch_worker("w2")

    with pytest.raises(BusyError, match="an artifact named 'a1' already exists"):
        pipeline.snapshot(settings, "w2", "a1", store=store)

    assert second.alive() and second.ready() is not None


@pytest.fixture
def artifact(settings: Settings, store: Store, launch_worker) -> str:
    """A published artifact of a worker whose launch environment the test chose."""

    def make(**env: str) -> str:
        launch_worker(**env)
        pipeline.snapshot(settings, "w", "a1", store=store)
        return "a1"

    return make


def assert_restore_left_nothing(settings: Settings, store: Store, digest: str) -> None:
    assert store.verify("a1").digest == digest  # the artifact is unchanged
    assert processes_of(settings.home) == []
    restored = [i for i in pipeline.list_instances(settings) if i.origin == "restored"]
    assert all(not i.alive() and i.state == "failed" for i in restored)


def test_a_restore_whose_thaw_hook_fails_leaves_no_process_and_the_artifact_intact(settings: Settings, store: Store,
                                                                                   artifact) -> None:
    name = artifact(TEST_THAW_FAIL="1")
    digest = store.manifest(name).digest

    with pytest.raises(RestoreError, match="restore of 'a1' failed: .*thaw hook failed on purpose"):
        pipeline.restore(settings, name, store=store, name="copy")

    assert_restore_left_nothing(settings, store, digest)
    [copy] = [i for i in pipeline.list_instances(settings) if i.origin == "restored"]
    assert copy.host_pid > 0  # it was restored, then killed


def test_a_restore_that_fails_its_canary_is_killed(settings: Settings, store: Store, artifact) -> None:
    name = artifact(TEST_CANARY_RANDOM="1")
    digest = store.manifest(name).digest

    with pytest.raises(CanaryMismatch, match="does not reproduce the canary recorded in 'a1'") as mismatch:
        pipeline.restore(settings, name, store=store)

    assert mismatch.value.expected != mismatch.value.got
    assert_restore_left_nothing(settings, store, digest)
    pipeline.restore(settings, name, store=store, verify_canary=False)  # the user may waive the check


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_flipped_byte_in_any_image_file_is_refused_naming_the_file(settings: Settings, store: Store,
                                                                       artifact) -> None:
    name = artifact()
    root = Path(store.root) / name
    files = store.manifest(name).files
    assert len([f for f in files if f.path.startswith("images/")]) > 5

    for entry in files:
        if entry.size == 0:
            continue
        flip_byte(root / entry.path)
        with pytest.raises(IntegrityError) as damaged:
            pipeline.restore(settings, name, store=store)
        assert entry.path in str(damaged.value)
        assert Path(damaged.value.path) == root / entry.path
        flip_byte(root / entry.path)  # mend it for the next one

    assert pipeline.list_instances(settings)[0].origin == "launched"  # no restore ever started
    assert processes_of(settings.home) == []
    store.verify(name)


def test_a_flipped_byte_anywhere_in_the_manifest_is_refused_with_a_pinned_digest(settings: Settings, store: Store,
                                                                                 artifact) -> None:
    """The manifest is a file of the artifact too: any byte changed (a digit of a timing, a letter of the
    canary) changes the digest the caller pinned, or makes it unreadable; either way nothing is restored."""
    name = artifact()
    digest = store.manifest(name).digest
    path = Path(store.root) / name / "manifest.json"
    size = path.stat().st_size

    for offset in range(0, size, max(1, size // 60)):
        flip_byte(path, offset)
        with pytest.raises(IntegrityError):  # UntrustedArtifact (another digest) or malformed
            pipeline.restore(settings, name, store=store, expected_digest=digest)
        flip_byte(path, offset)

    assert [i.origin for i in pipeline.list_instances(settings)] == ["launched"]
    assert processes_of(settings.home) == []
    assert store.verify(name, expected_digest=digest).digest == digest


def test_a_missing_image_file_is_refused_naming_the_file(settings: Settings, store: Store, artifact) -> None:
    name = artifact()
    victim = max(store.manifest(name).files, key=lambda f: f.size).path
    (Path(store.root) / name / victim).unlink()

    with pytest.raises(IntegrityError, match=f"file {victim} is missing"):
        pipeline.restore(settings, name, store=store)

    assert [i.origin for i in pipeline.list_instances(settings)] == ["launched"]
    assert processes_of(settings.home) == []


def test_an_unknown_manifest_schema_is_refused(settings: Settings, store: Store, artifact) -> None:
    name = artifact()
    manifest = Path(store.root) / name / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["schema_version"] = 99
    manifest.write_text(json.dumps(raw))

    with pytest.raises(IntegrityError, match="has schema version 99; this thaw reads version 2 only") as refused:
        pipeline.restore(settings, name, store=store)

    assert str(refused.value).startswith(str(manifest))

    assert [i.origin for i in pipeline.list_instances(settings)] == ["launched"]
    assert processes_of(settings.home) == []


def test_an_io_uring_is_named_before_anything_is_frozen(settings: Settings, store: Store, launch_worker) -> None:
    """Before: CRIU failed after the freeze with "Unknown shit 600 (anon_inode:[io_uring])" (uvloop's libuv
    set the ring up: an unmodified uvicorn server on the GPU machine)."""
    original = launch_worker(TEST_HOLD_IO_URING="1")

    with pytest.raises(CheckpointError) as refused:
        pipeline.snapshot(settings, "w", "a1", store=store)

    assert refused.value.message.startswith("snapshot of 'w' refused: it holds an io_uring, which CRIU cannot "
                                            f"snapshot: pid {original.host_pid} (fd ")
    assert "uvicorn --loop asyncio" in refused.value.hint and refused.value.hint.endswith("nothing was frozen")
    assert store.list() == [] and staging_debris(store) == []
    pipeline.release(settings, "w")
    assert state(original.dir)["hooks"] == []  # never frozen
