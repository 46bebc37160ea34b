"""Snapshot and restore of real CUDA workers (issue 3 and 4 acceptance, on the GPU machine)."""

from __future__ import annotations

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from thaw import pipeline
from thaw.errors import CheckpointError, RestoreError
from thaw.store import open_store

from .conftest import get, start_worker

pytestmark = [pytest.mark.gpu, pytest.mark.criu]


def test_graph_worker_restores_bit_identical_and_serves_twice_over(settings) -> None:
    orig = start_worker(settings, filler_gib="1")
    recorded = orig.ready().canary
    snap = pipeline.snapshot(settings, orig.id, "g1")
    assert snap.manifest.gpus, "the manifest records the GPU the worker used"
    assert not orig.alive(), "without --leave-running the original is gone once the artifact is published"

    first = pipeline.restore(settings, "g1", name="first")
    assert first.canary_got == recorded
    assert get(first.instance, "/infer") == recorded, "eager and graph outputs are bit-identical after restore"

    # second cycle: the restored worker parks again, is snapshotted, and that artifact restores too
    get(first.instance, "/park", method="POST")
    pipeline.wait_ready(settings, first.instance, timeout=60)
    pipeline.snapshot(settings, first.instance.id, "g2")
    second = pipeline.restore(settings, "g2", name="second")
    assert get(second.instance, "/infer") == recorded


def test_two_restores_of_one_artifact_run_at_once_on_one_gpu(settings) -> None:
    orig = start_worker(settings)
    recorded = orig.ready().canary
    pipeline.snapshot(settings, orig.id, "twin")
    with ThreadPoolExecutor(2) as pool:
        copies = list(pool.map(lambda i: pipeline.restore(settings, "twin", name=f"copy{i}"), (1, 2)))
    pids = {c.instance.host_pid for c in copies}
    assert len(pids) == 2
    answers = [None, None]

    def hammer(i: int) -> None:  # both copies replay their graphs at the same time
        answers[i] = [get(copies[i].instance, "/infer") for _ in range(20)]

    threads = [threading.Thread(target=hammer, args=(i,)) for i in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for per_copy in answers:
        assert per_copy and all(a == recorded for a in per_copy)


def test_restore_onto_the_other_gpu(settings) -> None:
    from thaw.cuda import devices

    gpus = devices()
    if len(gpus) < 2:
        pytest.skip("needs two GPUs (run scripts/gpu-suite.sh on nvidia-h200-x2)")
    orig = start_worker(settings)
    recorded = orig.ready().canary
    snap = pipeline.snapshot(settings, orig.id, "moved")
    source_uuid = snap.manifest.gpus[0].uuid
    target = next(g for g in gpus if g.uuid != source_uuid)
    moved = pipeline.restore(settings, "moved", gpu_target=target.index)
    assert get(moved.instance, "/infer") == recorded
    from thaw.pipeline.gpu import record_gpus

    # every visible GPU is recorded; the worker's memory now sits on the target alone
    on = {g.uuid: g.used_bytes for g in record_gpus(moved.instance.host_pid)}
    assert on[target.uuid], on
    assert not on[source_uuid], on


def test_failed_dump_after_gpu_checkpoint_leaves_the_original_running(settings, tmp_path: Path) -> None:
    # a connected unix socket to a server outside the sandbox: CRIU refuses to dump it, after the GPU checkpoint
    path = Path("/tmp") / f"thaw-ext-{os.getpid()}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    try:
        orig = start_worker(settings, external_socket=str(path))
        recorded = orig.ready().canary
        with pytest.raises(CheckpointError) as err:
            pipeline.snapshot(settings, orig.id, "broken")
        assert "criu dump failed" in str(err.value)
        assert orig.alive()
        assert not open_store(settings.store_url).exists("broken")
        pipeline.release(settings, orig)
        assert get(orig, "/infer") == recorded, "the original keeps running with correct outputs"
    finally:
        server.close()
        path.unlink(missing_ok=True)


def test_restore_refused_before_anything_when_gpu_memory_is_short(settings) -> None:
    import torch

    orig = start_worker(settings, filler_gib="4")
    snap = pipeline.snapshot(settings, orig.id, "big")
    index = snap.manifest.gpus[0].index
    free, _ = torch.cuda.mem_get_info(index)
    # leave 1 GiB on the recorded GPU: less than the worker needs
    hog = torch.empty(free - (1 << 30), dtype=torch.uint8, device=f"cuda:{index}")
    try:
        before = {i.id for i in pipeline.list_instances(settings)}
        with pytest.raises(RestoreError) as err:
            pipeline.restore(settings, "big", gpu_target=index)
        assert "memory" in str(err.value)
        assert {i.id for i in pipeline.list_instances(settings)} == before, "nothing was restored"
    finally:
        del hog
        torch.cuda.empty_cache()
    open_store(settings.store_url).verify("big")


def test_kv_cache_released_shrinks_the_image_by_its_size_and_graphs_replay(settings) -> None:
    kv_gib = 8
    plain = start_worker(settings, name="plain", kv_gib=str(kv_gib), kv_plain="1")
    plain_size = pipeline.snapshot(settings, plain.id, "kv-plain").manifest.size
    pooled = start_worker(settings, name="pooled", kv_gib=str(kv_gib))
    recorded = pooled.ready().canary
    snap = pipeline.snapshot(settings, pooled.id, "kv-pooled")
    released = sum(r.bytes for r in snap.manifest.memory_released if r.tag == "kv")
    assert released >= kv_gib * 2**30
    shrink = plain_size - snap.manifest.size
    assert abs(shrink - kv_gib * 2**30) <= 0.01 * kv_gib * 2**30, (plain_size, snap.manifest.size)

    restored = pipeline.restore(settings, "kv-pooled")
    assert get(restored.instance, "/infer") == recorded, "model outputs match the run without snapshot"
    check = get(restored.instance, "/kvcheck?seed=7")
    assert check["ok"], check
