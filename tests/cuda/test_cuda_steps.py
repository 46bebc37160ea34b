"""The pipeline's GPU steps on the fake driver: ordering, rollback, idempotence, restore planning."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cuda_fakes import CHECKPOINTED, FAILED, H200, LOCKED, RUNNING, uuid_of

from thaw.cuda import gpus
from thaw.model import GpuInfo, GpuPair, GpuRecord, parse_uuid
from thaw.pipeline import gpu as steps
from thaw.pipeline.gpu import checkpoint_gpu, plan_gpu_pairs, restore_gpu, rollback_gpu
from thaw.errors import CheckpointError, ConfigError, CudaError, RestoreError

PID = 4321
A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
C = "GPU-cccccccc-0000-0000-0000-000000000003"
GIB = 1 << 30


def calls(fake) -> list[str]:
    return [name for name, _ in fake.calls if name.startswith("cuCheckpointProcess") and not name.endswith("GetState")]


# --- snapshot side ---------------------------------------------------------------------------------


def test_checkpoint_locks_then_checkpoints_and_times_both(fake_cuda) -> None:
    fake_cuda.states[PID] = RUNNING
    timings = checkpoint_gpu(PID, lock_timeout_ms=1234)
    assert set(timings) == {"cuda_lock", "cuda_checkpoint"}
    assert all(isinstance(v, float) and v >= 0 for v in timings.values())
    assert calls(fake_cuda) == ["cuCheckpointProcessLock", "cuCheckpointProcessCheckpoint"]
    assert fake_cuda.lock_timeouts == [1234]
    assert fake_cuda.states[PID] == CHECKPOINTED


def test_a_failed_checkpoint_unlocks_the_worker_and_says_so(fake_cuda) -> None:
    fake_cuda.states[PID] = RUNNING
    fake_cuda.fail("cuCheckpointProcessCheckpoint", 801)
    with pytest.raises(CheckpointError) as err:
        checkpoint_gpu(PID)
    assert fake_cuda.states[PID] == RUNNING
    assert "CUDA_ERROR_NOT_SUPPORTED" in str(err.value) and "rolled back" in str(err.value)
    assert isinstance(err.value.__cause__, CudaError)
    assert calls(fake_cuda)[-1] == "cuCheckpointProcessUnlock"


def test_a_lock_timeout_leaves_the_worker_running(fake_cuda) -> None:
    fake_cuda.states[PID] = RUNNING
    fake_cuda.fail("cuCheckpointProcessLock", 909)
    with pytest.raises(CheckpointError, match="CUDA_ERROR_TIMEOUT"):
        checkpoint_gpu(PID)
    assert fake_cuda.states[PID] == RUNNING
    assert "cuCheckpointProcessUnlock" not in calls(fake_cuda), "nothing to undo: it never got locked"


def test_a_failed_rollback_after_a_failed_checkpoint_says_the_process_must_go(fake_cuda) -> None:
    fake_cuda.states[PID] = RUNNING
    fake_cuda.fail("cuCheckpointProcessCheckpoint", 2)
    fake_cuda.fail("cuCheckpointProcessUnlock", 999)
    with pytest.raises(CheckpointError, match="rolling it back failed too.*LOCKED and must be killed"):
        checkpoint_gpu(PID)


def test_checkpoint_refuses_a_process_that_is_not_running(fake_cuda) -> None:
    fake_cuda.states[PID] = LOCKED
    with pytest.raises(CheckpointError, match="LOCKED, not RUNNING"):
        checkpoint_gpu(PID)
    assert calls(fake_cuda) == []


@pytest.mark.parametrize("start, expected", [
    (CHECKPOINTED, ["cuCheckpointProcessRestore", "cuCheckpointProcessUnlock"]),
    (LOCKED, ["cuCheckpointProcessUnlock"]),
    (RUNNING, []),
])
def test_rollback_does_only_what_is_left(fake_cuda, start: int, expected: list[str]) -> None:
    fake_cuda.states[PID] = start
    timings = rollback_gpu(PID)
    assert calls(fake_cuda) == expected
    assert fake_cuda.states[PID] == RUNNING
    assert len(timings) == len(expected)
    rollback_gpu(PID)  # idempotent
    assert calls(fake_cuda) == expected
    assert fake_cuda.restore_pairs in ([], [[]]), "a rollback restores onto the same GPUs: no pairs"


def test_rollback_of_a_failed_process_raises(fake_cuda) -> None:
    fake_cuda.states[PID] = FAILED
    with pytest.raises(CudaError, match="must be killed"):
        rollback_gpu(PID)


# --- restore side ----------------------------------------------------------------------------------


def test_restore_restores_then_unlocks_with_the_pairs_in_the_args(fake_cuda) -> None:
    fake_cuda.states[PID] = CHECKPOINTED
    timings = restore_gpu(PID, [GpuPair(A, B), GpuPair(B, A)])
    assert set(timings) == {"cuda_restore", "cuda_unlock"}
    assert fake_cuda.states[PID] == RUNNING
    [seen] = fake_cuda.restore_pairs
    assert seen == [(parse_uuid(A), parse_uuid(B)), (parse_uuid(B), parse_uuid(A))]


def test_restore_without_pairs_passes_zeroed_args(fake_cuda) -> None:
    fake_cuda.states[PID] = CHECKPOINTED
    restore_gpu(PID, [])
    assert fake_cuda.restore_raw == [bytes(64)]


def test_a_failed_restore_names_the_state_it_left(fake_cuda) -> None:
    fake_cuda.states[PID] = CHECKPOINTED
    fake_cuda.fail("cuCheckpointProcessRestore", 801)
    with pytest.raises(RestoreError) as err:
        restore_gpu(PID)
    assert "CUDA_ERROR_NOT_SUPPORTED" in str(err.value)
    assert "the process is CHECKPOINTED" in str(err.value)


def test_restore_refuses_a_process_that_is_not_checkpointed(fake_cuda) -> None:
    fake_cuda.states[PID] = RUNNING
    with pytest.raises(RestoreError, match="RUNNING, not CHECKPOINTED"):
        restore_gpu(PID)


# --- planning a restore --------------------------------------------------------------------------


def gpu(index: int, uuid: str, *, name: str = "NVIDIA H200", free: int | None = 100 * GIB) -> GpuInfo:
    return GpuInfo(index=index, uuid=uuid, name=name, memory_total=141 * GIB, memory_free=free,
                   driver_version="580.159.04", compute_capability="9.0")


def record(uuid: str, used: int | None, *, index: int = 0, name: str = "NVIDIA H200") -> GpuRecord:
    return GpuRecord(index=index, uuid=uuid, name=name, memory_total=141 * GIB, used_bytes=used,
                     compute_capability="9.0")


def test_same_gpu_on_this_host_needs_no_pairs() -> None:
    assert plan_gpu_pairs([record(A, 5 * GIB)], None, available=[gpu(0, A), gpu(1, B)]) == []


def test_another_host_picks_the_same_chip_with_most_free_memory() -> None:
    local = [gpu(0, B, free=20 * GIB), gpu(1, C, free=90 * GIB)]
    assert plan_gpu_pairs([record(A, 5 * GIB)], None, available=local) == [GpuPair(A, C)]


def test_a_target_index_swaps_with_the_gpu_the_worker_saw_but_did_not_use() -> None:
    # the probe's accepted form: GPU 0 → 1 together with 1 → 0
    recorded = [record(A, 5 * GIB, index=0), record(B, 0, index=1)]
    pairs = plan_gpu_pairs(recorded, 1, available=[gpu(0, A), gpu(1, B)])
    assert pairs == [GpuPair(A, B), GpuPair(B, A)]


def test_a_target_uuid_works_like_an_index() -> None:
    pairs = plan_gpu_pairs([record(A, GIB)], B.lower(), available=[gpu(0, A), gpu(1, B)])
    assert pairs == [GpuPair(A, B)]


def test_a_different_chip_is_refused() -> None:
    with pytest.raises(RestoreError, match="chip differs.*'NVIDIA H200'.*'NVIDIA H100'"):
        plan_gpu_pairs([record(A, GIB)], 0, available=[gpu(0, B, name="NVIDIA H100")])
    with pytest.raises(RestoreError, match="chip differs"):
        plan_gpu_pairs([record(A, GIB)], None, available=[gpu(0, B, name="NVIDIA H100")])


def test_too_little_free_memory_is_refused_before_anything_is_touched() -> None:
    with pytest.raises(RestoreError, match="not enough free memory: 4.00 GiB free, 5.00 GiB needed"):
        plan_gpu_pairs([record(A, 5 * GIB)], None, available=[gpu(0, A, free=4 * GIB)])
    with pytest.raises(RestoreError, match="memory"):
        plan_gpu_pairs([record(A, 3 * GIB)], None, available=[gpu(0, A, free=4 * GIB)], headroom_bytes=2 * GIB)


def test_the_original_gpu_when_full_gives_way_to_a_fitting_one() -> None:
    local = [gpu(0, A, free=GIB), gpu(1, B, free=50 * GIB)]
    assert plan_gpu_pairs([record(A, 5 * GIB)], None, available=local) == [GpuPair(A, B)]


def test_unknown_free_memory_is_not_a_refusal() -> None:
    assert plan_gpu_pairs([record(A, 5 * GIB)], None, available=[gpu(0, B, free=None)]) == [GpuPair(A, B)]


def test_bad_targets_are_config_errors() -> None:
    local = [gpu(0, A), gpu(1, B)]
    with pytest.raises(ConfigError, match="no GPU with index 7"):
        plan_gpu_pairs([record(A, GIB)], 7, available=local)
    with pytest.raises(ConfigError, match="no GPU GPU-cccccccc"):
        plan_gpu_pairs([record(A, GIB)], C, available=local)
    with pytest.raises(ConfigError, match="used 2 GPU"):
        plan_gpu_pairs([record(A, GIB), record(B, GIB, index=1)], 0, available=local)
    with pytest.raises(ConfigError, match="given twice"):
        plan_gpu_pairs([record(A, GIB), record(B, GIB, index=1)], [1, 1], available=local)


def test_a_gpu_worker_on_a_host_without_gpus_is_refused() -> None:
    with pytest.raises(RestoreError, match="has none"):
        plan_gpu_pairs([record(A, GIB)], None, available=[])


def test_records_validate_and_normalise() -> None:
    rec = GpuRecord.model_validate(record(A, GIB).model_dump() | {"uuid": A.upper().replace("GPU-", "gpu-")})
    assert rec.uuid == A
    with pytest.raises(ValueError):
        GpuRecord.model_validate({**record(A, GIB).model_dump(), "surprise": 1})


def test_record_gpus_follows_the_workers_visible_devices(monkeypatch) -> None:
    local = [gpu(0, A), gpu(1, B), gpu(2, C)]
    monkeypatch.setattr(gpus, "devices", lambda: local)
    monkeypatch.setattr(gpus, "process_memory", lambda uuid, pids: 3 * GIB if uuid == C else 0)
    env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "2,GPU-aaaaaaaa"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        records = steps.record_gpus(child.pid)
    finally:
        child.kill()
        child.wait()
    assert [(r.uuid, r.used_bytes) for r in records] == [(C, 3 * GIB), (A, 0)]
    assert records[0].name == "NVIDIA H200" and records[0].index == 2


def test_record_gpus_without_visible_devices_records_all(monkeypatch) -> None:
    monkeypatch.setattr(gpus, "devices", lambda: [gpu(0, A), gpu(1, B)])
    monkeypatch.setattr(gpus, "process_memory", lambda uuid, pids: None)
    records = steps.record_gpus(1, pids=[1])
    assert [r.uuid for r in records] == [A, B]
    assert all(r.used for r in records), "unknown usage counts as used: the planner then checks every GPU"


def test_a_gpuinfo_from_this_fake_matches_what_plan_expects(fake_cuda) -> None:
    [local] = gpus.devices()
    assert local.uuid == uuid_of(H200[1])
    assert plan_gpu_pairs([record(local.uuid, GIB)], None) == []


def test_record_gpus_says_unknown_when_nvml_sees_no_process_that_proc_shows(monkeypatch) -> None:
    # NVML reports host pids; an agent in another pid namespace matches none of them
    monkeypatch.setattr(gpus, "devices", lambda: [gpu(0, A), gpu(1, B)])
    monkeypatch.setattr(gpus, "process_memory", lambda uuid, pids: 0)
    monkeypatch.setattr(steps, "_holds_gpu", lambda pid: True)
    assert [r.used_bytes for r in steps.record_gpus(1, pids=[1])] == [None, None]
    monkeypatch.setattr(steps, "_holds_gpu", lambda pid: False)
    assert [r.used_bytes for r in steps.record_gpus(1, pids=[1])] == [0, 0]
