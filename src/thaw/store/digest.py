"""File digests: SHA-256 per chunk, and per file over its chunk digests, computed by parallel readers.

A file's digest is the SHA-256 of its size and its chunks' digests (a two-level hash, like an
S3 multipart ETag), so that every chunk of every file can be read and hashed at the same time:
one multi-GiB CRIU page image is no longer read by a single thread. Verifying an artifact checks
every chunk, and names the file and the chunk that differs.

SHA-256 and not a faster non-cryptographic hash (xxh3): these digests are what a signature and a
``NAME@DIGEST`` pin stand for, so nobody who can write the store may be able to make other bytes
with the same digest. hashlib's SHA-256 uses the CPU's SHA extensions and releases the GIL, and
the chunks are hashed in parallel.

Every file is opened through ``confined.Tree`` (no symlink is ever followed), and a copy checks
each chunk in memory before a single byte of it is written.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from thaw.errors import IntegrityError
from thaw.store.confined import Tree
from thaw.store.manifest import CHUNK_SIZE, FileEntry, Manifest, chunk_count, file_digest

__all__ = ["chunk_digest", "copy_verified", "describe_file", "describe_files", "describe_tree", "file_digest",
           "verify_tree"]

#: readers at once; reads and hashing release the GIL
WORKERS = min(16, (os.cpu_count() or 2) * 2)
READ_SIZE = 4 << 20
_buffers = threading.local()
T = TypeVar("T")


def chunk_digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _buffer(kind: str, size: int) -> memoryview:
    """A per-thread buffer of at least ``size`` bytes (no allocation per chunk)."""
    buf = getattr(_buffers, kind, None)
    if buf is None or len(buf) < size:
        buf = bytearray(size)
        setattr(_buffers, kind, buf)
    return memoryview(buf)[:size]


def _read_digest(fd: int, offset: int, length: int) -> str:
    """Digest of ``length`` bytes at ``offset`` (fewer if the file is shorter), read in pieces."""
    view = _buffer("read", READ_SIZE)
    h = hashlib.sha256()
    done = 0
    while done < length:
        n = os.preadv(fd, [view[: min(READ_SIZE, length - done)]], offset + done)
        if n == 0:
            break
        h.update(view[:n])
        done += n
    return h.hexdigest()


def _read_full(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def _parallel(fn: Callable[[T], object], tasks: list[T], workers: int) -> list[object]:
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks) or 1))) as pool:
        return list(pool.map(fn, tasks))


def describe_tree(root: Path, *, chunk_size: int = CHUNK_SIZE, workers: int = WORKERS,
                  make_private: bool = False) -> list[FileEntry]:
    """Entries for every regular file under ``root`` except the manifest, every chunk read in parallel.

    Refuses (IntegrityError) a tree that holds anything but regular files and directories.
    With ``make_private`` the tree's directories become 0700 and its files 0600 first.
    """
    with Tree.open(root) as tree:
        return _describe(tree, tree.files(make_private=make_private), chunk_size, workers)


def describe_files(root: Path, rels: list[str], *, chunk_size: int = CHUNK_SIZE,
                   workers: int = WORKERS) -> list[FileEntry]:
    """Entries for the files ``rels`` below ``root`` (opened without following symlinks)."""
    with Tree.open(root) as tree:
        return _describe(tree, rels, chunk_size, workers)


def describe_file(root: Path, rel: str, *, chunk_size: int = CHUNK_SIZE) -> FileEntry:
    """Size, chunk digests and file digest of ``root/rel``."""
    return describe_files(root, [rel], chunk_size=chunk_size)[0]


def _describe(tree: Tree, rels: Iterable[str], chunk_size: int, workers: int) -> list[FileEntry]:
    sizes = {rel: tree.size(rel) for rel in rels}
    tasks = [(rel, k) for rel, size in sizes.items() for k in range(chunk_count(size, chunk_size))]

    def digest(task: tuple[str, int]) -> str:
        rel, k = task
        fd = tree.open_file(rel)
        try:
            return _read_digest(fd, k * chunk_size, min(chunk_size, sizes[rel] - k * chunk_size))
        finally:
            os.close(fd)

    by_file: dict[str, list[str]] = {rel: [] for rel in sizes}
    for (rel, _k), d in zip(tasks, _parallel(digest, tasks, workers)):
        by_file[rel].append(str(d))
    return [FileEntry(path=rel, size=size, digest=file_digest(size, by_file[rel]), chunks=by_file[rel])
            for rel, size in sizes.items()]


def verify_tree(root: Path, manifest: Manifest, *, workers: int = WORKERS) -> None:
    """Check every file of ``manifest`` under ``root``: present, regular, same size, every chunk the same.

    Raises IntegrityError naming the first file (and chunk) that differs. Extra files, symlinks
    and special files are refused too: an artifact is exactly what its manifest lists.
    """
    with Tree.open(root) as tree:
        present = set(tree.files())
        listed = {f.path for f in manifest.files}
        if missing := sorted(listed - present):
            raise IntegrityError(f"artifact {manifest.name!r}: file {missing[0]} is missing", path=root / missing[0])
        if extra := sorted(present - listed):
            raise IntegrityError(f"artifact {manifest.name!r}: file {extra[0]!r} is not in the manifest",
                                 path=root / extra[0])
        for entry in manifest.files:
            _check_size(manifest, entry, tree.size(entry.path), root)
        size = manifest.chunk_size

        def check(task: tuple[FileEntry, int]) -> None:
            entry, k = task
            fd = tree.open_file(entry.path)
            try:
                got = _read_digest(fd, k * size, min(size, entry.size - k * size))
            finally:
                os.close(fd)
            if got != entry.chunks[k]:
                raise _mismatch(manifest, entry, k, root)

        _parallel(check, [(e, k) for e in manifest.files for k in range(len(e.chunks))], workers)


def copy_verified(src: Path, dst: Path, manifest: Manifest, *, workers: int = WORKERS) -> None:
    """Copy every file of ``manifest`` from ``src`` into the empty private directory ``dst``, chunks in parallel.

    Reads each byte once: each chunk is read into memory and checked against its digest, and only
    then written. Raises IntegrityError naming the file and chunk that differs; the caller removes ``dst``.
    """
    size = manifest.chunk_size
    with Tree.open(src) as source, Tree.open(dst) as target:
        for entry in manifest.files:
            _check_size(manifest, entry, source.size(entry.path), src)
            target.create_file(entry.path, entry.size)

        def copy(task: tuple[FileEntry, int]) -> None:
            entry, k = task
            offset = k * size
            view = _buffer("chunk", min(size, entry.size - offset))
            fd = source.open_file(entry.path)
            try:
                n = _read_full(fd, view, offset)
            finally:
                os.close(fd)
            if n != len(view) or chunk_digest(view) != entry.chunks[k]:
                raise _mismatch(manifest, entry, k, src)
            target.write_at(entry.path, offset, view)

        _parallel(copy, [(e, k) for e in manifest.files for k in range(len(e.chunks))], workers)


def _check_size(manifest: Manifest, entry: FileEntry, actual: int, root: Path) -> None:
    if actual != entry.size:
        raise IntegrityError(f"artifact {manifest.name!r}: {entry.path} has {actual} bytes, the manifest says "
                             f"{entry.size}", path=Path(root) / entry.path)


def _mismatch(manifest: Manifest, entry: FileEntry, k: int, root: Path) -> IntegrityError:
    start = k * manifest.chunk_size
    end = min(start + manifest.chunk_size, entry.size)
    return IntegrityError(f"artifact {manifest.name!r}: {entry.path} does not match its digest (chunk {k}, bytes "
                          f"{start}-{end})", path=Path(root) / entry.path)
