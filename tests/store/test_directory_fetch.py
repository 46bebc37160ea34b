"""Restore staging from a shared directory: ``dir:///path?fetch=copy`` copies into node-local staging, checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from thaw.errors import ConfigError, IntegrityError
from thaw.store import DirectoryStore, open_store
from thaw.store.manifest import CHUNK_SIZE, Manifest, SourceInfo, WorkerInfo


def publish(store: DirectoryStore, name: str, files: dict[str, bytes]) -> Manifest:
    with store.stage(name) as staged:
        for rel, data in files.items():
            (staged.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged.dir / rel).write_bytes(data)
        staged.published = Manifest(artifact_id=staged.artifact_id, name=name,
                                    source=SourceInfo(host="h", kernel="k"), worker=WorkerInfo(name="w"))
    assert staged.published is not None
    return staged.published


FILES = {"images/pages-1.img": os.urandom(2 * CHUNK_SIZE + 12345), "images/core-1.img": b"core",
         "images/empty.img": b""}


def test_a_copying_store_stages_a_verified_copy_on_local_disk(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    publish(DirectoryStore(shared), "a1", FILES)
    store = open_store(f"dir://{shared}?fetch=copy")

    fetched = store.fetch("a1", tmp_path / "staging")
    try:
        assert not fetched.in_place and fetched.dir.parent == tmp_path / "staging"
        for rel, data in FILES.items():
            assert (fetched.dir / rel).read_bytes() == data
        assert fetched.stats["bytes"] == sum(len(d) for d in FILES.values()) and fetched.stats["read_gbps"] > 0
    finally:
        fetched.cleanup()
    assert not fetched.dir.exists()


def test_a_corrupted_chunk_is_caught_while_copying_and_nothing_is_left_in_staging(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    publish(DirectoryStore(shared), "a1", FILES)
    image = shared / "a1" / "images" / "pages-1.img"
    data = bytearray(image.read_bytes())
    data[CHUNK_SIZE + 7] ^= 0xFF  # one flipped byte in the second chunk
    image.write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match=r"images/pages-1.img does not match its digest \(chunk 1,"):
        open_store(f"{shared}?fetch=copy").fetch("a1", tmp_path / "staging")
    assert list((tmp_path / "staging").iterdir()) == []


def test_an_unknown_store_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fetch=copy"):
        open_store(f"dir://{tmp_path}?fetch=sometimes")
