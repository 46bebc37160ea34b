"""File digests: xxh3-128 per chunk, and per file over its chunk digests, computed by parallel readers.

A file's digest is the xxh3-128 of its size and its chunks' digests (a two-level hash, like an
S3 multipart ETag), so that every chunk of every file can be read and hashed at the same time:
one multi-GiB CRIU page image is no longer read by a single thread. Verifying an artifact checks
every chunk, and names the file and the chunk that differs.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

from thaw.errors import IntegrityError
from thaw.model.manifest import CHUNK_SIZE, DIGEST_ALGORITHM, FileEntry, Manifest

#: readers at once; reads release the GIL, and hashing (~30 GB/s) is not the bottleneck
WORKERS = min(16, (os.cpu_count() or 2) * 2)


def chunk_digest(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def file_digest(size: int, chunks: list[str]) -> str:
    """The digest of a whole file from its size and its chunks' digests."""
    h = xxhash.xxh3_128(f"{size}\n".encode())
    for c in chunks:
        h.update(bytes.fromhex(c))
    return f"{DIGEST_ALGORITHM}:{h.hexdigest()}"


def _chunks_of(path: Path, chunk_size: int) -> tuple[int, list[int]]:
    size = os.stat(path).st_size
    return size, list(range(0, size, chunk_size)) or [0]


READ_SIZE = 4 << 20
_buffers = threading.local()


def _read_digest(path: Path, offset: int, length: int) -> str:
    """Digest of ``length`` bytes at ``offset``, read into a per-thread buffer (no large allocations)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    h = xxhash.xxh3_128()
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < length:
            n = os.preadv(fd, [view[: min(READ_SIZE, length - done)]], offset + done)
            if n == 0:
                break
            h.update(view[:n])
            done += n
    finally:
        os.close(fd)
    return h.hexdigest()


def describe_tree(root: Path, *, chunk_size: int = CHUNK_SIZE, workers: int = WORKERS) -> list[FileEntry]:
    """Entries for every regular file under ``root`` except the manifest, every chunk read in parallel."""
    root = Path(root)
    rels = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
    return describe_files(root, rels, chunk_size=chunk_size, workers=workers)


def describe_files(root: Path, rels: list[str], *, chunk_size: int = CHUNK_SIZE,
                   workers: int = WORKERS) -> list[FileEntry]:
    layout = {rel: _chunks_of(Path(root) / rel, chunk_size) for rel in rels}
    tasks = [(rel, off) for rel, (_size, offs) in layout.items() for off in offs]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks)))) as pool:
        digests = list(pool.map(lambda t: _read_digest(Path(root) / t[0], t[1], chunk_size), tasks))
    by_file: dict[str, list[str]] = {rel: [] for rel in rels}
    for (rel, _off), d in zip(tasks, digests):
        by_file[rel].append(d)
    entries = []
    for rel in rels:
        size = layout[rel][0]
        chunks = by_file[rel] if size else []
        entries.append(FileEntry(path=rel, size=size, digest=file_digest(size, chunks), chunks=chunks))
    return entries


def describe_file(root: Path, rel: str, *, chunk_size: int = CHUNK_SIZE) -> FileEntry:
    """Size, chunk digests and file digest of ``root/rel``."""
    return describe_files(root, [rel], chunk_size=chunk_size)[0]


def verify_tree(root: Path, manifest: Manifest, *, workers: int = WORKERS) -> None:
    """Check every file of ``manifest`` under ``root``: present, same size, every chunk the same.

    Raises IntegrityError naming the first file (and chunk) that differs. Extra files are
    refused too: an artifact is exactly what its manifest lists.
    """
    root = Path(root)
    listed = {f.path for f in manifest.files}
    present = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"}
    if missing := sorted(listed - present):
        raise IntegrityError(f"artifact {manifest.name!r}: file {missing[0]} is missing", path=root / missing[0])
    if extra := sorted(present - listed):
        raise IntegrityError(f"artifact {manifest.name!r}: file {extra[0]} is not in the manifest",
                             path=root / extra[0])
    for entry in manifest.files:
        actual = os.stat(root / entry.path).st_size
        if actual != entry.size:
            raise IntegrityError(
                f"artifact {manifest.name!r}: {entry.path} has {actual} bytes, the manifest says {entry.size}",
                path=root / entry.path)
        if file_digest(entry.size, entry.chunks) != entry.digest:
            raise IntegrityError(f"artifact {manifest.name!r}: the manifest's chunk list for {entry.path} "
                                 "does not match its file digest", path=root / entry.path)
    size = manifest.chunk_size
    tasks = [(e, k) for e in manifest.files for k in range(len(e.chunks))]

    def check(task: tuple[FileEntry, int]) -> None:
        entry, k = task
        if _read_digest(root / entry.path, k * size, size) != entry.chunks[k]:
            raise IntegrityError(
                f"artifact {manifest.name!r}: {entry.path} does not match its digest (chunk {k}, bytes "
                f"{k * size}-{min((k + 1) * size, entry.size)})", path=root / entry.path)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks) or 1))) as pool:
        for _ in pool.map(check, tasks):
            pass


def copy_verified(src: Path, dst: Path, manifest: Manifest, *, workers: int = WORKERS) -> None:
    """Copy every file of ``manifest`` from ``src`` to ``dst``, chunks in parallel, each checked as it passes.

    Reads each byte once (read → hash → write): the restore staging of a shared volume.
    Raises IntegrityError naming the file and chunk that differs; the caller removes ``dst``.
    """
    src, dst = Path(src), Path(dst)
    for entry in manifest.files:
        target = dst / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            f.truncate(entry.size)
    size = manifest.chunk_size

    def copy(task: tuple[FileEntry, int]) -> None:
        entry, k = task
        buf = getattr(_buffers, "buf", None)
        if buf is None:
            buf = _buffers.buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        h = xxhash.xxh3_128()
        offset, end = k * size, min((k + 1) * size, entry.size)
        fin = os.open(src / entry.path, os.O_RDONLY)
        fout = os.open(dst / entry.path, os.O_WRONLY)
        try:
            while offset < end:
                n = os.preadv(fin, [view[: min(READ_SIZE, end - offset)]], offset)
                if n == 0:
                    break
                h.update(view[:n])
                os.pwrite(fout, view[:n], offset)
                offset += n
        finally:
            os.close(fin)
            os.close(fout)
        if h.hexdigest() != entry.chunks[k]:
            raise IntegrityError(f"artifact {manifest.name!r}: {entry.path} does not match its digest (chunk {k})",
                                 path=src / entry.path)

    tasks = [(e, k) for e in manifest.files for k in range(len(e.chunks))]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks) or 1))) as pool:
        for _ in pool.map(copy, tasks):
            pass
