"""Where the pipeline calls the GPU steps for the worker's process tree, with real CRIU and a real (CPU) worker and
the GPU steps replaced by recorders: a refusal comes before the freeze; a failed dump undoes exactly the processes
that were checkpointed; the manifest names them by their pid in the sandbox, and a restore finds them by it.
(thaw.cuda.tree's own tests cover the driver calls; tests/gpu runs it all on a GPU.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw import pipeline
from thaw.config import Settings
from thaw.errors import CheckpointError
from thaw.pipeline import gpu
from thaw.store import Store
from workers import state

pytestmark = pytest.mark.criu


@pytest.fixture
def gpu_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """The pipeline's GPU steps as recorders; the worker's root plays a process with CUDA state."""
    calls: list[tuple] = []
    monkeypatch.setattr(gpu, "plan_tree", lambda root, parked, hooks: calls.append(("plan", root, parked)) or "plan")
    monkeypatch.setattr(gpu, "confirm_tree", lambda plan: calls.append(("confirm", plan)) or [calls[0][1]])
    monkeypatch.setattr(gpu, "record_tree", lambda root, pids: [{"index": 0, "uuid": "GPU-x", "name": "fake"}])
    monkeypatch.setattr(gpu, "checkpoint_tree", lambda pids: calls.append(("checkpoint", list(pids))) or {})
    monkeypatch.setattr(gpu, "rollback_tree", lambda pids: calls.append(("rollback", list(pids))))
    monkeypatch.setattr(gpu, "plan", lambda recorded, target: calls.append(("plan_pairs", len(recorded))))
    monkeypatch.setattr(gpu, "restore_tree", lambda root, ns, pairs: calls.append(("restore", root, list(ns))) or {})
    return calls


def test_a_tree_thaw_cannot_dump_is_refused_before_the_freeze_hooks_run(settings: Settings, store: Store,
                                                                        launch_worker, monkeypatch) -> None:
    original = launch_worker()

    def refuse(root: int, parked: int, hooks: list[str]) -> None:
        raise CheckpointError("cannot snapshot this worker: pid 7 (python3 -m compile_worker) holds the GPU")

    monkeypatch.setattr(gpu, "plan_tree", refuse)
    with pytest.raises(CheckpointError, match="pid 7"):
        pipeline.snapshot(settings, "w", "refused", store=store)
    assert store.list() == []
    pipeline.release(settings, "w")
    assert state(original.dir)["hooks"] == [], "the worker was never frozen"


def test_a_failed_dump_rolls_back_every_checkpointed_process_and_nothing_else(settings: Settings, store: Store,
                                                                             launch_worker, gpu_steps, tmp_path: Path,
                                                                             outside_server) -> None:
    original = launch_worker(TEST_HOLD_SOCKET=str(outside_server))  # CRIU refuses to dump this worker
    with pytest.raises(CheckpointError, match="External socket"):
        pipeline.snapshot(settings, "w", "a1", store=store)
    pid = original.host_pid
    assert gpu_steps == [("plan", pid, 1), ("confirm", "plan"), ("checkpoint", [pid]), ("rollback", [pid])]
    pipeline.release(settings, "w")
    assert state(original.dir)["hooks"] == ["freeze:snapshot", "thaw:abort"]


def test_the_manifest_names_gpu_processes_by_their_sandbox_pid_and_restore_finds_them(settings: Settings, store: Store,
                                                                                     launch_worker, gpu_steps) -> None:
    original = launch_worker()
    snap = pipeline.snapshot(settings, "w", "tree", store=store, leave_running=True)
    assert snap.manifest.gpu_pids == [1], "the worker is pid 1 of its sandbox"
    assert gpu_steps[-1] == ("rollback", [original.host_pid]), "--leave-running resumes what was checkpointed"
    restored = pipeline.restore(settings, "tree", store=store, name="copy")
    assert gpu_steps[-2:] == [("plan_pairs", 1), ("restore", restored.instance.host_pid, [1])]
    assert state(restored.instance.dir)["outcome"] == "thawed"
