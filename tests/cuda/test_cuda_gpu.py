"""thaw.cuda on a real GPU: identity, and the driver checkpoint of a child torch process (run on the GPU machine).

Each test starts ``gpu_child.py`` (a torch process with a captured CUDA graph), drives the
checkpoint API on its pid from this process, and compares the child's outputs before and
after, bit for bit. No CRIU here: that is the pipeline's test (tests/gpu/).
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

import thaw.cuda
from thaw.cuda import checkpointing, process
from thaw.pipeline import gpu as steps
from thaw.cuda.checkpointing import ProcessState

pytestmark = pytest.mark.gpu

CHILD = Path(__file__).parent / "gpu_child.py"
SRC = Path(thaw.cuda.__file__).resolve().parent.parent.parent


class Child:
    """gpu_child.py, spoken to over its stdin/stdout, every read under a deadline."""

    def __init__(self, **env: str) -> None:
        full = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen([sys.executable, str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=full)
        self.pid = self.proc.pid
        self.ready = self.read(timeout=300)
        assert self.ready.get("ready"), self.ready

    def read(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                return json.loads(line)
            if self.proc.poll() is not None:
                break
        self.proc.kill()
        raise AssertionError(f"gpu_child gave no answer within {timeout}s; stderr:\n{self.proc.stderr.read()[-4000:]}")

    def ask(self, command: str, timeout: float = 120) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.read(timeout)
        assert "error" not in answer, answer
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                if checkpointing.get_state(self.pid) is ProcessState.RUNNING:
                    self.ask("exit", timeout=30)
            except Exception:  # noqa: BLE001,S110 - it is killed just below anyway
                pass
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def child():
    made: list[Child] = []

    def start(**env: str) -> Child:
        made.append(Child(**env))
        return made[-1]

    yield start
    for c in made:
        c.close()


def test_devices_describe_the_gpus() -> None:
    gpus = thaw.cuda.devices()
    assert gpus
    for gpu in gpus:
        assert re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", gpu.uuid), gpu
        assert gpu.name.startswith("NVIDIA"), gpu
        assert gpu.memory_total > 0
        assert gpu.memory_free is not None and 0 < gpu.memory_free <= gpu.memory_total, "NVML gives free memory"
        assert re.fullmatch(r"\d+\.\d+", gpu.compute_capability)
    assert re.match(r"\d+\.\d+", thaw.cuda.driver_version())
    assert thaw.cuda.cuda_version() >= 12080
    assert checkpointing.supported()


def test_lock_checkpoint_restore_unlock_of_a_torch_child_is_bit_identical(child) -> None:
    c = child()
    before = c.ready["outputs"]
    assert process.process_uses_gpu(c.pid)
    records = steps.record_gpus(c.pid)
    used = [r for r in records if r.used]
    assert used and all(r.used_bytes is None or r.used_bytes > 256 << 20 for r in used), records
    assert checkpointing.get_state(c.pid) is ProcessState.RUNNING
    assert checkpointing.restore_thread_id(c.pid) > 0  # asked while RUNNING, as the probe did

    checkpointing.lock(c.pid, 10_000)
    assert checkpointing.get_state(c.pid) is ProcessState.LOCKED
    checkpointing.checkpoint(c.pid)
    assert checkpointing.get_state(c.pid) is ProcessState.CHECKPOINTED
    assert not process.process_uses_gpu(c.pid), process.gpu_handles(c.pid)  # probe: no /dev/nvidia* left
    checkpointing.restore(c.pid)
    assert checkpointing.get_state(c.pid) is ProcessState.LOCKED
    checkpointing.unlock(c.pid)
    assert checkpointing.get_state(c.pid) is ProcessState.RUNNING
    assert process.process_uses_gpu(c.pid)
    assert c.ask("check")["outputs"] == before


def test_the_pipeline_steps_round_trip_and_roll_back(child) -> None:
    c = child()
    before = c.ready["outputs"]
    records = steps.record_gpus(c.pid)

    timings = steps.checkpoint_gpu(c.pid, 10_000)
    assert set(timings) == {"cuda_lock", "cuda_checkpoint"}
    assert steps.rollback_gpu(c.pid).keys() == {"cuda_restore", "cuda_unlock"}, "as after a failed dump"
    assert steps.rollback_gpu(c.pid) == {}, "idempotent"
    assert c.ask("check")["outputs"] == before

    steps.checkpoint_gpu(c.pid)
    pairs = steps.plan_gpu_pairs(records, None)
    assert pairs == [], "same host, same GPU: nothing to remap"
    assert set(steps.restore_gpu(c.pid, pairs)) == {"cuda_restore", "cuda_unlock"}
    assert c.ask("check")["outputs"] == before


def test_a_released_kv_region_survives_a_driver_checkpoint_and_its_graph_replays(child) -> None:
    c = child(CHILD_KV_MIB="512", CHILD_FILLER_MIB="64")
    before = c.ready["outputs"]
    assert before["kv_graph"] == before["kv_eager"]
    released = c.ask("release")["released"]
    assert released["tag"] == "kv" and released["bytes"] >= 512 << 20

    steps.checkpoint_gpu(c.pid)
    steps.restore_gpu(c.pid)

    reacquired = c.ask("reacquire")["reacquired"]
    assert reacquired["bytes"] == released["bytes"]
    after = c.ask("check")["outputs"]
    assert after["eager"] == before["eager"] and after["graph"] == before["graph"]
    assert after["filler"] == before["filler"]
    assert after["kv_graph"] == after["kv_eager"], "the graph reads the cache at its old addresses"
    assert after["kv_graph"] != before["kv_graph"], "on the new contents (seed 2), not stale ones"


def test_restore_onto_the_other_gpu(child) -> None:
    gpus = thaw.cuda.devices()
    if len(gpus) < 2:
        pytest.skip("needs two GPUs (nvidia-h200-x2)")
    c = child(CHILD_DEVICE="0")
    before = c.ready["outputs"]
    records = steps.record_gpus(c.pid)
    source = c.ready["driver_uuid"]
    target = next(g for g in gpus if g.uuid != source)
    pairs = steps.plan_gpu_pairs(records, target.index)
    assert pairs and pairs[0].old == source and pairs[0].new == target.uuid
    steps.checkpoint_gpu(c.pid)
    steps.restore_gpu(c.pid, pairs)
    answer = c.ask("check")
    assert answer["outputs"] == before
    assert answer["driver_uuid"] == target.uuid, "the driver reports the new GPU (probe)"
