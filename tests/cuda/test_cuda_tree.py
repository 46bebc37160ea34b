"""The GPU steps for a whole process tree, on the fake driver and a fake /proc: which processes are
checkpointed, which must depart, which are refused; lock all → checkpoint all; restore all → unlock all;
rollback of exactly what was done when one process fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cuda_fakes import CHECKPOINTED, FAILED, LOCKED, RUNNING

from thaw.cuda import process, tree
from thaw.errors import CheckpointError, CudaError, RestoreError

ROOT, CHILD, SIDECAR, POOL, NVML = 100, 101, 102, 103, 104
GPU_MAPS = ["7f0000000000-7f0000200000 rw-s 00000000 00:05 815   /dev/nvidia0\n",
            "7f0000200000-7f0000400000 rw-s 00000000 00:05 816   /dev/nvidiactl\n"]
SIDECAR_CMD = ["/usr/bin/python3", "/venv/lib/python3.12/site-packages/torch/_inductor/compile_worker/__main__.py",
               "--kind=fork", "--workers=16", f"--parent={ROOT}"]


class FakeProc:
    """A /proc with the files thaw reads: stat (parent), status (PPid, NSpid), cmdline, fd/, maps."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, pid: int, parent: int, argv: list[str], *, gpu: bool = False, fds: dict[str, str] | None = None,
            ns_pid: int | None = None) -> None:
        base = self.root / str(pid)
        (base / "fd").mkdir(parents=True)
        for fd, target in (fds or {}).items():
            os.symlink(target, base / "fd" / fd)
        (base / "stat").write_text(f"{pid} (python3) S {parent} {pid} {pid} 0 -1\n")
        nspid = f"{pid}\t{ns_pid}" if ns_pid is not None else f"{pid}"
        (base / "status").write_text(f"Name:\tpython3\nPPid:\t{parent}\nNSpid:\t{nspid}\n")
        (base / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (base / "maps").write_text("".join(GPU_MAPS) if gpu else "")

    def release_gpu(self, pid: int) -> None:
        (self.root / str(pid) / "maps").write_text("")

    def remove(self, pid: int) -> None:
        import shutil

        shutil.rmtree(self.root / str(pid))


@pytest.fixture
def proc(tmp_path, monkeypatch) -> FakeProc:
    monkeypatch.setattr(process, "PROC", tmp_path)
    return FakeProc(tmp_path)


@pytest.fixture
def engine(proc, fake_cuda) -> FakeProc:
    """A worker like a torch.compile'd engine: root and a child with CUDA state, the root's compile pool."""
    proc.add(ROOT, 1, ["python3", "server.py"], gpu=True, ns_pid=1)
    proc.add(CHILD, ROOT, ["python3", "-c", "from multiprocessing.spawn import spawn_main"], gpu=True, ns_pid=2)
    proc.add(SIDECAR, ROOT, SIDECAR_CMD, gpu=True, ns_pid=3)
    proc.add(POOL, SIDECAR, SIDECAR_CMD, gpu=True, ns_pid=4)
    fake_cuda.states.update({ROOT: RUNNING, CHILD: RUNNING})  # the pool has no CUDA state of its own
    return proc


def driver_calls(fake) -> list[tuple[str, int]]:
    return [(name.removeprefix("cuCheckpointProcess"), pid) for name, pid in fake.calls
            if name.startswith("cuCheckpointProcess") and not name.endswith(("GetState", "GetRestoreThreadId"))]


# --- before the freeze: classify and refuse ---------------------------------------------------------


def test_the_parked_processs_compile_pool_departs_and_every_cuda_process_is_checkpointed(engine, fake_cuda) -> None:
    plan = tree.plan_tree(ROOT, parked=ROOT, hooks=["thaw.cuda.torch"])
    assert [p.pid for p in plan.checkpoint] == [ROOT, CHILD]
    assert [p.pid for p in plan.departing] == [SIDECAR, POOL]
    assert all(p.compile_pool_of == ROOT for p in plan.departing)
    assert driver_calls(fake_cuda) == [], "classifying touches no process"


def test_a_compile_pool_nobody_shuts_down_is_refused_before_anything_is_frozen(engine, fake_cuda) -> None:
    with pytest.raises(CheckpointError) as err:
        tree.plan_tree(ROOT, parked=ROOT, hooks=["my-own-hook"])
    text = str(err.value)
    assert f"pid {SIDECAR} (" in text and f"pid {POOL} (" in text and "compile_worker" in text
    assert "TORCHINDUCTOR_COMPILE_THREADS=1" in text and "thaw.cuda.worker_hooks.install()" in text
    assert "nothing was frozen" in text
    assert driver_calls(fake_cuda) == []


def test_the_compile_pool_of_a_process_that_is_not_parked_is_refused(engine) -> None:
    # e.g. vLLM's engine core compiles in a child: the freeze hook of the parked parent cannot reach its pool
    with pytest.raises(CheckpointError, match=f"compile-worker pool of pid {ROOT}"):
        tree.plan_tree(ROOT, parked=CHILD, hooks=["thaw.cuda.torch"])


def test_a_process_with_device_handles_but_no_cuda_state_is_refused_by_name(proc, fake_cuda) -> None:
    proc.add(ROOT, 1, ["python3", "server.py"], gpu=True)
    proc.add(NVML, ROOT, ["python3", "metrics.py", "--nvml"], fds={"3": "/dev/nvidiactl", "4": "/dev/nvidia0"})
    fake_cuda.states[ROOT] = RUNNING
    with pytest.raises(CheckpointError) as err:
        tree.plan_tree(ROOT, parked=ROOT, hooks=["thaw.cuda.torch"])
    text = str(err.value)
    assert f"pid {NVML} (python3 metrics.py --nvml)" in text
    assert "fd 3 -> /dev/nvidiactl" in text and "nvmlShutdown()" in text


def test_a_cpu_worker_plans_nothing_and_never_asks_the_driver(proc, monkeypatch) -> None:
    proc.add(ROOT, 1, ["python3", "server.py"])
    proc.add(CHILD, ROOT, ["python3", "child.py"])
    monkeypatch.setattr(tree.checkpointing, "restore_thread_id", lambda pid: pytest.fail("driver asked"))
    assert tree.plan_tree(ROOT, parked=ROOT, hooks=[]).empty


# --- after the freeze: the departing processes must be gone -------------------------------------------


def test_confirm_returns_the_cuda_processes_once_the_pool_is_gone(engine) -> None:
    plan = tree.plan_tree(ROOT, parked=ROOT, hooks=["thaw.cuda.torch"])
    engine.remove(POOL)
    engine.release_gpu(SIDECAR)  # exiting: its mappings are gone before its /proc entry
    assert tree.confirm_tree(plan, timeout=1) == [ROOT, CHILD]


def test_confirm_refuses_a_departing_process_that_stays(engine) -> None:
    plan = tree.plan_tree(ROOT, parked=ROOT, hooks=["thaw.cuda.torch"])
    engine.remove(POOL)
    with pytest.raises(CheckpointError, match=f"pid {SIDECAR} .* still holds the GPU"):
        tree.confirm_tree(plan, timeout=0.1)


# --- lock all → checkpoint all, and rollback ------------------------------------------------------------


def test_every_process_is_locked_before_any_is_checkpointed(fake_cuda) -> None:
    fake_cuda.states.update({ROOT: RUNNING, CHILD: RUNNING})
    timings = tree.checkpoint_tree([ROOT, CHILD], lock_timeout_ms=777)
    assert driver_calls(fake_cuda) == [("Lock", ROOT), ("Lock", CHILD), ("Checkpoint", ROOT), ("Checkpoint", CHILD)]
    assert fake_cuda.lock_timeouts == [777, 777]
    assert set(timings) == {"cuda_lock", "cuda_checkpoint"}
    assert fake_cuda.states == {ROOT: CHECKPOINTED, CHILD: CHECKPOINTED}


def test_a_failed_checkpoint_restores_those_done_before_unlocking_any(fake_cuda) -> None:
    fake_cuda.states.update({ROOT: RUNNING, CHILD: RUNNING})
    fake_cuda.errors["cuCheckpointProcessCheckpoint"] = [0, 2]  # the root's succeeds, the child's fails
    with pytest.raises(CheckpointError) as err:
        tree.checkpoint_tree([ROOT, CHILD])
    assert fake_cuda.states == {ROOT: RUNNING, CHILD: RUNNING}
    assert "every process is RUNNING again" in str(err.value)
    assert isinstance(err.value.__cause__, CudaError) and err.value.__cause__.pid == CHILD
    assert driver_calls(fake_cuda)[4:] == [("Restore", ROOT), ("Unlock", ROOT), ("Unlock", CHILD)]


def test_a_lock_timeout_unlocks_only_those_already_locked(fake_cuda) -> None:
    fake_cuda.states.update({ROOT: RUNNING, CHILD: RUNNING})
    fake_cuda.errors["cuCheckpointProcessLock"] = [0, 909]
    with pytest.raises(CheckpointError, match="CUDA_ERROR_TIMEOUT"):
        tree.checkpoint_tree([ROOT, CHILD])
    assert driver_calls(fake_cuda) == [("Lock", ROOT), ("Lock", CHILD), ("Unlock", ROOT)]
    assert fake_cuda.states == {ROOT: RUNNING, CHILD: RUNNING}


def test_a_failed_rollback_says_the_worker_must_be_killed(fake_cuda) -> None:
    fake_cuda.states.update({ROOT: RUNNING, CHILD: RUNNING})
    fake_cuda.errors["cuCheckpointProcessCheckpoint"] = [0, 2]
    fake_cuda.errors["cuCheckpointProcessRestore"] = [999]
    with pytest.raises(CheckpointError, match="rolling back failed too.*must be killed") as err:
        tree.checkpoint_tree([ROOT, CHILD])
    assert f"{ROOT}: CHECKPOINTED" in str(err.value)
    assert fake_cuda.states[CHILD] == RUNNING, "the others are still brought back"


def test_nothing_is_locked_when_one_process_is_not_running(fake_cuda) -> None:
    fake_cuda.states.update({ROOT: RUNNING, CHILD: LOCKED})
    with pytest.raises(CheckpointError, match=f"pid {CHILD} is LOCKED"):
        tree.checkpoint_tree([ROOT, CHILD])
    assert driver_calls(fake_cuda) == []


def test_rollback_is_idempotent_skips_processes_without_cuda_and_restores_before_unlocking(fake_cuda) -> None:
    fake_cuda.states.update({ROOT: CHECKPOINTED, CHILD: LOCKED})
    tree.rollback_tree([ROOT, SIDECAR, CHILD])
    assert driver_calls(fake_cuda) == [("Restore", ROOT), ("Unlock", ROOT), ("Unlock", CHILD)]
    assert tree.rollback_tree([ROOT, SIDECAR, CHILD]) == {}, "a second rollback has nothing left to do"


def test_rollback_of_a_failed_process_raises_after_bringing_the_others_back(fake_cuda) -> None:
    fake_cuda.states.update({ROOT: FAILED, CHILD: CHECKPOINTED})
    with pytest.raises(CudaError, match="FAILED"):
        tree.rollback_tree([ROOT, CHILD])
    assert fake_cuda.states[CHILD] == RUNNING


# --- restore all → unlock all ----------------------------------------------------------------------------


def test_every_process_is_restored_before_any_is_unlocked(fake_cuda) -> None:
    fake_cuda.states.update({ROOT: CHECKPOINTED, CHILD: CHECKPOINTED})
    timings = tree.restore_tree([ROOT, CHILD])
    assert driver_calls(fake_cuda) == [("Restore", ROOT), ("Restore", CHILD), ("Unlock", ROOT), ("Unlock", CHILD)]
    assert set(timings) == {"cuda_restore", "cuda_unlock"}


def test_a_failed_restore_names_the_states_left(fake_cuda) -> None:
    fake_cuda.states.update({ROOT: CHECKPOINTED, CHILD: CHECKPOINTED})
    fake_cuda.errors["cuCheckpointProcessRestore"] = [0, 801]
    with pytest.raises(RestoreError, match=f"{ROOT}: LOCKED, {CHILD}: CHECKPOINTED"):
        tree.restore_tree([ROOT, CHILD])
    assert ("Unlock", ROOT) not in driver_calls(fake_cuda), "no process runs while a peer's state is away"


def test_restored_processes_are_found_by_their_pid_inside_the_sandbox(proc) -> None:
    proc.add(500, 1, ["python3", "server.py"], ns_pid=1)
    proc.add(507, 500, ["python3", "engine.py"], ns_pid=2)
    assert tree.host_pids_for(500, [1, 2]) == [500, 507]
    with pytest.raises(RestoreError, match=r"lacks the process\(es\) \[3\]"):
        tree.host_pids_for(500, [1, 3])
