"""File digests: whole-file and per-chunk xxh3-128, computed with parallel readers."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

from thaw.errors import IntegrityError
from thaw.store.manifest import CHUNK_SIZE, DIGEST_ALGORITHM, FileEntry, Manifest

READ_SIZE = 8 << 20


def chunk_digest(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def describe_file(root: Path, rel: str, *, chunk_size: int = CHUNK_SIZE) -> FileEntry:
    """Size, whole-file digest and chunk digests of ``root/rel``, in one pass."""
    whole = xxhash.xxh3_128()
    chunks: list[str] = []
    size = 0
    with open(Path(root) / rel, "rb", buffering=0) as f:
        while True:
            piece = f.read(chunk_size)
            if not piece:
                break
            whole.update(piece)
            chunks.append(chunk_digest(piece))
            size += len(piece)
    return FileEntry(path=rel, size=size, digest=f"{DIGEST_ALGORITHM}:{whole.hexdigest()}", chunks=chunks)


def describe_tree(root: Path, *, workers: int = 8) -> list[FileEntry]:
    """Entries for every regular file under ``root`` except the manifest, read in parallel."""
    root = Path(root)
    rels = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(rels)))) as pool:
        return list(pool.map(lambda r: describe_file(root, r), rels))


def verify_tree(root: Path, manifest: Manifest, *, workers: int = 8) -> None:
    """Check every file of ``manifest`` under ``root``: present, same size, same digest.

    Raises IntegrityError naming the first file that differs. Extra files are refused
    too: an artifact is exactly what its manifest lists.
    """
    root = Path(root)
    listed = {f.path for f in manifest.files}
    present = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"}
    if missing := sorted(listed - present):
        raise IntegrityError(f"artifact {manifest.name!r}: file {missing[0]} is missing", path=root / missing[0])
    if extra := sorted(present - listed):
        raise IntegrityError(f"artifact {manifest.name!r}: file {extra[0]} is not in the manifest", path=root / extra[0])

    def check(entry: FileEntry) -> None:
        path = root / entry.path
        actual = os.stat(path).st_size
        if actual != entry.size:
            raise IntegrityError(
                f"artifact {manifest.name!r}: {entry.path} has {actual} bytes, the manifest says {entry.size}",
                path=path,
            )
        got = describe_file(root, entry.path, chunk_size=manifest.chunk_size)
        if got.digest != entry.digest:
            raise IntegrityError(
                f"artifact {manifest.name!r}: {entry.path} does not match its digest "
                f"(expected {entry.digest}, got {got.digest})",
                path=path,
            )

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(manifest.files)))) as pool:
        for _ in pool.map(check, sorted(manifest.files, key=lambda e: -e.size)):
            pass
