"""Issue 16 on the GPU: a torch.compile'd worker (mode="reduce-overhead": CUDA graphs) with inductor's compile-worker
pool, and a worker whose child process holds CUDA state of its own. Real driver, real CRIU.

Run on the GPU machine: ``GPU_TESTS="tests/gpu/test_tree_gpu.py" scripts/gpu-suite.sh tests``.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from thaw import pipeline
from thaw.errors import CheckpointError

from .conftest import get

pytestmark = [pytest.mark.gpu, pytest.mark.criu]

WORKER = Path(__file__).parent / "workers" / "compiled_worker.py"
# a pool on any machine (inductor sizes it by the CPU count otherwise); Triton kernels are compiled in it
POOL = {"TORCHINDUCTOR_COMPILE_THREADS": "4"}


def start(settings, name: str, **env: str) -> pipeline.Instance:
    import os

    inst = pipeline.launch(settings, [sys.executable, str(WORKER)], name=name, env={**os.environ, **POOL, **env})
    pipeline.wait_ready(settings, inst, timeout=600)
    return inst


def tree_of(inst: pipeline.Instance) -> list[int]:
    from thaw.cuda import process

    return process.descendants(inst.host_pid)


def compile_workers_of(inst: pipeline.Instance) -> list[dict]:
    from thaw.cuda import process
    from thaw.errors import ThawError

    found = []
    for pid in tree_of(inst):
        if "torch/_inductor/compile_worker" not in process.command_line(pid):
            continue
        try:
            found.append({"pid": pid, "gpu": bool(process.gpu_handles(pid))})
        except ThawError:
            continue  # it exited while we looked (an idle pool may quiesce its workers)
    return found


def test_a_compiled_worker_with_its_compile_pool_snapshots_and_restores_twice_at_once(disk_settings) -> None:
    settings = disk_settings
    original = start(settings, "compiled")
    recorded = original.ready().canary
    pool = compile_workers_of(original)
    print("compile workers before the snapshot:", pool)  # which hold /dev/nvidia*: issue 16 saw all of them
    assert pool, "inductor started its compile-worker pool (TORCHINDUCTOR_COMPILE_THREADS=4)"

    snap = pipeline.snapshot(settings, original.id, "compiled")
    assert snap.manifest.gpu_pids == [1], "one process with CUDA state: the worker, pid 1 of its sandbox"
    report = snap.manifest.worker.freeze_report["thaw.cuda.torch"]
    assert report["compile_pools_stopped"] >= 1, report

    with ThreadPoolExecutor(2) as pool_:
        copies = list(pool_.map(lambda i: pipeline.restore(settings, "compiled", name=f"c{i}"), (1, 2)))
    for copy in copies:
        assert copy.canary_got == recorded, "CUDA graphs replay bit-identically after the restore"
        assert get(copy.instance, "/infer") == recorded
    compiled_again = get(copies[0].instance, "/compile", method="POST", deadline_s=600)
    assert compiled_again["ok"], "a restored copy compiles again: inductor starts a new pool when it needs one"


def test_every_gpu_process_of_the_tree_is_checkpointed_and_restored(disk_settings) -> None:
    settings = disk_settings
    original = start(settings, "two", WORKER_GPU_CHILD="1")
    recorded = original.ready().canary
    assert "child" in recorded

    snap = pipeline.snapshot(settings, original.id, "two", leave_running=True)
    assert len(snap.manifest.gpu_pids) == 2 and snap.manifest.gpu_pids[0] == 1, snap.manifest.gpu_pids
    assert get(original, "/infer") == recorded, "--leave-running: both processes were restored and unlocked"

    copy = pipeline.restore(settings, "two", name="two-copy")
    assert copy.canary_got == recorded
    assert get(copy.instance, "/infer") == recorded, "the child's device memory came back too"


def test_a_compile_pool_nobody_shuts_down_is_refused_before_the_freeze(disk_settings) -> None:
    settings = disk_settings
    original = start(settings, "nohooks", WORKER_NO_HOOKS="1")
    recorded = original.ready().canary
    pool = compile_workers_of(original)
    if not any(w["gpu"] for w in pool):
        pytest.skip(f"the compile pool holds no GPU handles on this machine ({pool}): CRIU dumps it, nothing to refuse")
    with pytest.raises(CheckpointError) as refused:
        pipeline.snapshot(settings, original.id, "nohooks")
    message = str(refused.value)
    assert "compile-worker pool of the parked process" in message and "TORCHINDUCTOR_COMPILE_THREADS=1" in message
    assert "nothing was frozen" in message
    pipeline.release(settings, original.id)
    assert get(original, "/infer") == recorded, "the refused worker was never frozen and serves on"
