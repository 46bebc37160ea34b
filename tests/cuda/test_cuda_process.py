"""Which processes hold a GPU, read from /proc (a fake /proc tree for the GPU case)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from thaw import proc
from thaw.cuda import process
from thaw.errors import WorkerError


def fake_proc(root: Path, pid: int, *, fds: dict[str, str], maps: list[str]) -> None:
    base = root / str(pid)
    (base / "fd").mkdir(parents=True)
    for fd, target in fds.items():
        os.symlink(target, base / "fd" / fd)
    (base / "maps").write_text("".join(maps))


def test_a_cuda_process_shows_its_device_fds_and_mappings(tmp_path, monkeypatch) -> None:
    fake_proc(tmp_path, 10, fds={"0": "/dev/null", "5": "/dev/nvidiactl", "7": "/dev/nvidia0"}, maps=[
        "7f0000000000-7f0000200000 rw-s 00000000 00:05 815   /dev/nvidia0\n",
        "7f0000200000-7f0000400000 rw-s 00000000 00:05 816   /dev/nvidia-uvm\n",
        "7f0000400000-7f0000600000 r--p 00000000 08:01 99    /usr/lib/libc.so.6\n",
    ])
    monkeypatch.setattr(proc, "PROC", tmp_path)
    assert process.process_uses_gpu(10)
    assert process.gpu_handles(10) == ["fd 5 -> /dev/nvidiactl", "fd 7 -> /dev/nvidia0",
                                       "map /dev/nvidia-uvm", "map /dev/nvidia0"]


def test_a_checkpointed_process_holds_no_gpu(tmp_path, monkeypatch) -> None:
    # probe: once checkpointed, the worker has no /dev/nvidia* fds or mappings
    fake_proc(tmp_path, 11, fds={"0": "/dev/null"}, maps=["7f0000000000-7f0000200000 rw-s 0 00:01 1  /dev/zero (deleted)\n"])
    monkeypatch.setattr(proc, "PROC", tmp_path)
    assert not process.process_uses_gpu(11)


def test_this_test_process_holds_no_gpu() -> None:
    assert not process.process_uses_gpu(os.getpid())


def test_a_vanished_process_is_a_worker_error() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(WorkerError, match=f"process {child.pid} does not exist"):
        process.process_uses_gpu(child.pid)


def test_descendants_lists_the_tree_parents_first() -> None:
    code = "import subprocess, sys, time; c = subprocess.Popen(['sleep', '30']); print(c.pid, flush=True); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    grandchild = None
    try:
        grandchild = int(parent.stdout.readline())
        tree = process.descendants(os.getpid())
        assert tree[0] == os.getpid()
        assert tree.index(parent.pid) < tree.index(grandchild)
        assert process.gpu_processes(parent.pid) == []
    finally:
        if grandchild:
            os.kill(grandchild, signal.SIGKILL)
        parent.kill()
        parent.wait()
