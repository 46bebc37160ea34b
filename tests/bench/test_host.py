"""Host preparation and bandwidths: pre-touching, reading, the GPU copy (absent without a GPU), waiting for GPU memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from thaw.bench import host


def test_pretouch_touches_what_it_says_and_gives_it_back() -> None:
    warmth = host.pretouch(64 << 20)
    assert warmth.pretouched_bytes == 64 << 20 and warmth.pretouch_seconds is not None
    assert host.pretouch(0).pretouched_bytes == 0


def test_read_bandwidth_reads_every_byte(tmp_path: Path) -> None:
    files = []
    for i, size in enumerate((3 << 20, 1, 0, 12345)):
        f = tmp_path / f"f{i}"
        f.write_bytes(os.urandom(size))
        files.append(f)
    assert host.read_bandwidth(files) > 0
    assert host.read_bandwidth([tmp_path / "f2"]) is None  # nothing to read: no figure, not infinity
    assert host.read_bandwidth([tmp_path / "missing"]) is None


def test_h2d_bandwidth_is_absent_without_a_gpu() -> None:
    from thaw.cuda import available

    if available():
        pytest.skip("this host has a GPU: tests/gpu measures it")
    assert host.h2d_bandwidth(1 << 20) is None


def test_waiting_for_gpu_memory_ends_when_the_stopped_pids_hold_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from thaw.cuda import gpus

    answers = iter([4 << 30, 4 << 30, 1 << 20, 0])  # NVML still lists the killed copy for a few polls
    asked: list[set[int]] = []

    def process_memory(uuid: str, pids: set[int]) -> int | None:
        asked.append(pids)
        return next(answers)

    monkeypatch.setattr(gpus, "process_memory", process_memory)
    waited = host.wait_gpu_released(["GPU-1"], [10, 11], timeout=10)
    assert 0 < waited < 10 and len(asked) == 4 and asked[0] == {10, 11}
    assert host.wait_gpu_released([], [10]) == 0.0  # no GPU: nothing to wait for


def test_waiting_gives_up_at_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from thaw.cuda import gpus

    monkeypatch.setattr(gpus, "process_memory", lambda uuid, pids: 1 << 30)
    assert host.wait_gpu_released(["GPU-1"], [10], timeout=0.2) >= 0.2
