"""Fill a weight set at link speed: parallel readers, two pinned buffers each, asynchronous copies, digests on the way.

Each file is read once, in blocks of the artifact store's chunk size (64 MiB), by
``threads`` reader threads that share one queue of blocks. A thread reads a block into
one of its two pinned buffers, hashes it (the store's per-chunk xxh3: the file digests
match the store's), starts the host→device copies of the tensor pieces that block holds
on its own stream, and goes on with its other buffer; before it reuses a buffer it waits
for that buffer's copies. Reads (``preadv``), hashing (xxhash) and the driver's copy calls
all release the GIL, so the threads overlap. The probe measured this shape at 24.8 GB/s
from the page cache on the H200 machine (8 threads, 64 MiB pinned buffers), against 7.6
GB/s for ``safetensors`` loading straight to the GPU.

Files mostly in the page cache are read buffered; files mostly not are read with
O_DIRECT where the file system allows it (not tmpfs), which skips the page cache's copy
on a cold disk. ``io`` forces either.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import xxhash

from thaw.errors import ConfigError, GmsError
from thaw.gms import libc
from thaw.gms.device import Backend
from thaw.gms.models import LoadReport, WeightFile, WeightSpec
from thaw.gms.plan import Placement
from thaw.store.digest import chunk_digest, file_digest
from thaw.store.manifest import CHUNK_SIZE

IoMode = Literal["auto", "buffered", "direct"]
DEFAULT_THREADS = 8
BLOCK = CHUNK_SIZE  # one read = one digest chunk of the store


@dataclass
class _Block:
    file: int
    index: int
    offset: int
    length: int
    pieces: list[tuple[int, int, int]] = field(default_factory=list)  # (offset in block, dest, length)


class HostBuffers:
    """Page-aligned (pinned, on a GPU) host buffers of BLOCK bytes, allocated once and reused by every load."""

    def __init__(self, backend: Backend, count: int) -> None:
        self.backend = backend
        self.addrs = [backend.host_buffer(BLOCK) for _ in range(count)]

    def close(self) -> None:
        for addr in self.addrs:
            self.backend.free_host_buffer(addr, BLOCK)
        self.addrs = []


def set_digest(files: list[WeightFile]) -> str:
    """The content digest of a set: its files' digests, in order."""
    h = xxhash.xxh3_128(f"{len(files)}\n".encode())
    for f in files:
        h.update(f"{f.digest}\n".encode())
    return f"xxh3_128:{h.hexdigest()}"


def fill(backend: Backend, base: int, spec: WeightSpec, placement: Placement, buffers: HostBuffers, *,
         io: IoMode = "auto") -> tuple[list[WeightFile], LoadReport]:
    """Copy every placed tensor of ``spec`` to ``base``; return the files with their digests, and how it went."""
    t0 = time.perf_counter()
    opened = _open_all(spec, io)
    try:
        blocks = _blocks(spec, placement)
        threads = max(1, min(len(buffers.addrs) // 2, len(blocks)))
        run = _Run(backend, base, opened, blocks, buffers.addrs[: 2 * threads])
        workers = [threading.Thread(target=run.worker, args=(k,), name=f"gms-load-{k}", daemon=True)
                   for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if run.error is not None:
            raise run.error
    finally:
        for fd, _mode, _cached in opened:
            os.close(fd)
    files = []
    for i, f in enumerate(spec.files):
        digest = file_digest(f.size, [run.digests[(i, b.index)] for b in blocks if b.file == i])
        if f.digest is not None and f.digest != digest:
            raise GmsError(f"{f.path} does not match the digest it was asked for ({f.digest}, read {digest})",
                           code="integrity", hint="the weights on this node differ from the snapshot's: "
                           "restore where the snapshot's weight files are, or take a new snapshot")
        files.append(WeightFile(path=f.path, size=f.size, digest=digest))
    seconds = time.perf_counter() - t0
    total = sum(f.size for f in spec.files)
    modes = {mode for _fd, mode, _cached in opened}
    cached = sum(c * f.size for (_fd, _m, c), f in zip(opened, spec.files)) / total if total else 1.0
    report = LoadReport(bytes=total, seconds=round(seconds, 6), gbps=round(total / seconds / 1e9, 3) if seconds else 0.0,
                        io=modes.pop() if len(modes) == 1 else "mixed", threads=threads,
                        read_seconds=round(run.read_s, 6), hash_seconds=round(run.hash_s, 6),
                        copy_wait_seconds=round(run.wait_s, 6), page_cache_fraction=round(cached, 4))
    return files, report


class _Run:
    def __init__(self, backend: Backend, base: int, opened: list[tuple[int, str, float]], blocks: list[_Block],
                 buffers: list[int]) -> None:
        self.backend, self.base, self.opened, self.blocks, self.buffers = backend, base, opened, blocks, buffers
        self.next = 0
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.digests: dict[tuple[int, int], str] = {}
        self.read_s = self.hash_s = self.wait_s = 0.0

    def take(self) -> _Block | None:
        with self.lock:
            if self.error is not None or self.next >= len(self.blocks):
                return None
            block = self.blocks[self.next]
            self.next += 1
            return block

    def worker(self, k: int) -> None:
        read_s = hash_s = wait_s = 0.0
        try:
            self.backend.bind_thread()
            stream = self.backend.stream()
            slots: list[list[object]] = [[self.buffers[2 * k], None], [self.buffers[2 * k + 1], None]]
            turn = 0
            try:
                while (block := self.take()) is not None:
                    slot = slots[turn % 2]
                    turn += 1
                    t = time.perf_counter()
                    stream.wait(slot[1])
                    slot[1] = None
                    wait_s += time.perf_counter() - t
                    addr = int(slot[0])  # type: ignore[call-overload]
                    view = memoryview((ctypes.c_char * BLOCK).from_address(addr)).cast("B")
                    t = time.perf_counter()
                    self._read(block, view)
                    read_s += time.perf_counter() - t
                    t = time.perf_counter()
                    self.digests[(block.file, block.index)] = chunk_digest(view[: block.length])
                    hash_s += time.perf_counter() - t
                    for at, dest, length in block.pieces:
                        stream.copy(self.base + dest, addr + at, length)
                    slot[1] = stream.fence()
            finally:
                t = time.perf_counter()
                for slot in slots:
                    stream.wait(slot[1])
                stream.close()
                wait_s += time.perf_counter() - t
        except BaseException as exc:  # the first failure stops every thread; fill() re-raises it
            with self.lock:
                if self.error is None:
                    self.error = exc
        with self.lock:
            self.read_s += read_s
            self.hash_s += hash_s
            self.wait_s += wait_s

    def _read(self, block: _Block, view: memoryview) -> None:
        fd, mode, _ = self.opened[block.file]
        want = block.length
        # O_DIRECT wants an aligned length; the block's end is aligned unless it is the file's end,
        # where the read comes back short, as asked
        ask = -(-want // libc.PAGE) * libc.PAGE if mode == "direct" else want
        done = 0
        while done < want:
            n = os.preadv(fd, [view[done:ask]], block.offset + done)
            if n == 0:
                raise GmsError(f"a weight file shrank while it was read (block at {block.offset})", code="io")
            done += n


def _open_all(spec: WeightSpec, io: IoMode) -> list[tuple[int, str, float]]:
    opened: list[tuple[int, str, float]] = []
    try:
        for f in spec.files:
            fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            opened.append((fd, "buffered", 1.0))
            size = os.fstat(fd).st_size
            if size != f.size:
                raise ConfigError("weights", f"{f.path} is {size} bytes, the request says {f.size}: it changed")
            cached = libc.resident_fraction(fd, size)
            mode = "direct" if io == "direct" or (io == "auto" and cached < 0.5) else "buffered"
            if mode == "direct":
                try:
                    direct = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_DIRECT)
                except OSError:
                    if io == "direct":
                        raise
                    mode = "buffered"  # tmpfs and some others refuse O_DIRECT: the page cache it is
                else:
                    os.close(fd)
                    fd = direct
            opened[-1] = (fd, mode, cached)
    except OSError as exc:
        for fd, _m, _c in opened:
            os.close(fd)
        raise ConfigError("weights", f"cannot read {exc.filename or 'a weight file'}: {exc.strerror}") from None
    except BaseException:
        for fd, _m, _c in opened:
            os.close(fd)
        raise
    return opened


def _blocks(spec: WeightSpec, placement: Placement) -> list[_Block]:
    blocks: dict[tuple[int, int], _Block] = {}
    order: list[_Block] = []
    for i, f in enumerate(spec.files):
        for index, offset in enumerate(range(0, f.size, BLOCK) if f.size else [0]):
            block = _Block(i, index, offset, min(BLOCK, f.size - offset))
            blocks[(i, index)] = block
            order.append(block)
    per_file: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for seg in placement.segments:
        per_file[seg.file].append((seg.file_offset, seg.length, seg.dest))
    for i, segs in per_file.items():
        for start, length, dest in segs:
            pos, end = start, start + length
            while pos < end:
                index = pos // BLOCK
                block = blocks[(i, index)]
                stop = min(end, block.offset + block.length)
                block.pieces.append((pos - block.offset, dest + (pos - start), stop - pos))
                pos = stop
    return order
