"""Putting the host in a known state before timing, and measuring how fast it moves bytes.

* :func:`pretouch` — on the GPU machines, memory is backed on first touch (~3 s per 8 GiB,
  issue #14): touching as much as the largest image before timing keeps that cost out of
  every restore, and the result records that it was done;
* :func:`drop_caches` — the kernel's page cache emptied, so the next read comes from the device;
* :func:`read_bandwidth` — how fast this host reads a set of files (parallel readers, as the
  store's fetch reads them);
* :func:`h2d_bandwidth` — pinned host → device copies with torch, in a child process so that
  the benchmark's own process never holds a CUDA context (it costs GPU memory on every GPU).
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy

from thaw.bench.schema import HostWarmth
from thaw.errors import HostError

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
PAGE = mmap.PAGESIZE
READ_BLOCK = 8 << 20


def pretouch(nbytes: int) -> HostWarmth:
    """Write one byte to every page of ``nbytes`` of fresh anonymous memory, then give it back."""
    if nbytes <= 0:
        return HostWarmth()
    t0 = time.perf_counter()
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as exc:
        raise HostError(f"cannot map {nbytes / 2**30:.1f} GiB to pre-touch: {exc.strerror}",
                        hint="pre-touch less (--pretouch) or free memory first") from None
    try:
        pages = numpy.frombuffer(region, dtype=numpy.uint8)
        pages[::PAGE] = 1  # one store per page faults every page in; numpy keeps it a C loop
        del pages
    finally:
        region.close()
    return HostWarmth(pretouched_bytes=nbytes, pretouch_seconds=round(time.perf_counter() - t0, 3))


def can_drop_caches() -> bool:
    return os.access(DROP_CACHES, os.W_OK)


def drop_caches() -> None:
    """Write dirty pages back, then drop the page cache, dentries and inodes (root only)."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as exc:
        raise HostError(f"cannot drop the page cache ({DROP_CACHES}: {exc.strerror})",
                        hint="run as root, or leave out --drop-caches") from None


def read_bandwidth(files: list[Path], threads: int = 8) -> float | None:
    """Bytes per second reading ``files`` whole, ``threads`` at a time; None when there is nothing to read."""
    files = [f for f in files if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    if total == 0:
        return None

    buffers = threading.local()  # one buffer per reader: a fresh 8 MiB per file would cost more than small files

    def read(path: Path) -> int:
        view = getattr(buffers, "view", None)
        if view is None:
            view = buffers.view = memoryview(bytearray(READ_BLOCK))
        n = 0
        with open(path, "rb", buffering=0) as f:
            while got := f.readinto(view):
                n += got
        return n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        done = sum(pool.map(read, sorted(files, key=lambda f: -f.stat().st_size)))
    seconds = time.perf_counter() - t0
    return done / seconds if seconds > 0 else None


def h2d_bandwidth(nbytes: int = 1 << 30, timeout: float = 300.0) -> float | None:
    """Pinned host → device copy bandwidth of GPU 0 in bytes/s, measured with torch; None without torch or GPU."""
    proc = subprocess.run([sys.executable, "-m", "thaw.bench.h2d", str(nbytes)], capture_output=True, text=True,
                          timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line).get("bytes_per_s")
    return None


def gpu_uuids() -> list[str]:
    """The UUIDs of this host's GPUs; [] without GPUs or a driver (nothing to wait for, then)."""
    try:
        from thaw.cuda import available, devices
    except ImportError:
        return []
    return [g.uuid for g in devices()] if available() else []


def gpu_pids(pid: int) -> list[int]:
    """``pid`` and its descendants: the processes whose GPU memory a stop must give back."""
    from thaw.cuda.process import descendants

    return descendants(pid) if pid > 0 else []


def wait_gpu_released(uuids: list[str], pids: list[int], timeout: float = 60.0) -> float:
    """Wait until no GPU lists any of ``pids`` as holding memory (NVML); the seconds it took.

    The driver frees a killed worker's memory as the process exits, and NVML can report it a
    moment later: the next restore must not find the previous copy's memory still taken (its
    plan would refuse the GPU, or its KV cache would not fit). Memory others hold (a GPU memory
    service, another tenant) does not count. Gives up quietly at ``timeout``: the next restore
    then fails with the driver's own reason, and the result counts it.
    """
    if not uuids or not pids:
        return 0.0
    from thaw.cuda.gpus import process_memory

    wanted = set(pids)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if all(not process_memory(uuid, wanted) for uuid in uuids):  # 0, or None where NVML cannot tell
            break
        time.sleep(0.05)
    return time.monotonic() - t0
