"""Whoever can write the store must not be able to use an artifact as a weapon against the nodes that read it.

Each backend gets crafted manifests and trees: paths that leave the artifact (``../``, absolute),
symlinks inside the artifact, ``chunks: []`` for a non-empty file, and chunks whose bytes do not
match. Every one must be refused with a typed error, and nothing outside the artifact and its
private staging directory may be read into the artifact or written.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from thaw.errors import ConfigError, IntegrityError
from thaw.store import DirectoryStore, open_store
from thaw.store.digest import describe_file
from thaw.store.manifest import CHUNK_SIZE, Manifest, SourceInfo, WorkerInfo

MIB = 1 << 20
PRECIOUS = b"a host file that must never change\n"
ATTACK = b"root::0:0::/root:/bin/sh\n"
REFUSED = (IntegrityError, ConfigError)


def _entry(root: Path, rel: str, chunk_size: int = CHUNK_SIZE) -> dict:
    """The manifest entry (size, digests) that thaw itself would write for ``root/rel``."""
    return json.loads(describe_file(root, rel, chunk_size=chunk_size).model_dump_json())


def _rewrite(artifact: Path, change) -> None:
    raw = json.loads((artifact / "manifest.json").read_text())
    change(raw)
    (artifact / "manifest.json").write_text(json.dumps(raw))


def _victim(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PRECIOUS)
    return path


def _attacker_file(path: Path, data: bytes = ATTACK) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def bare_manifest(name: str) -> Manifest:
    return Manifest(artifact_id="", name=name, source=SourceInfo(host="test", kernel="test"),
                    worker=WorkerInfo(name="w"))


def _nothing_left(staging: Path) -> None:
    assert not staging.exists() or list(staging.iterdir()) == [], "no partial copy left in staging"


# ---- a directory store read in place ----------------------------------------------------------------


@pytest.fixture
def local(tmp_path, publish):
    store = DirectoryStore(tmp_path / "store")
    publish(store, "a1", {"images/pages-1.img": 3 * MIB, "images/core-1.img": 100})
    return store, tmp_path / "store" / "a1"


def test_in_place_refuses_a_symlinked_file_even_with_matching_bytes(local, tmp_path):
    store, art = local
    outside = _attacker_file(tmp_path / "elsewhere" / "core.img", (art / "images" / "core-1.img").read_bytes())
    (art / "images" / "core-1.img").unlink()
    (art / "images" / "core-1.img").symlink_to(outside)

    with pytest.raises(IntegrityError, match="core-1.img.*symlink"):
        store.verify("a1")
    with pytest.raises(IntegrityError, match="symlink"):
        store.fetch("a1", tmp_path / "staging")


def test_in_place_refuses_a_symlinked_directory(local, tmp_path):
    store, art = local
    (art / "images").rename(tmp_path / "elsewhere")
    (art / "images").symlink_to(tmp_path / "elsewhere")

    with pytest.raises(IntegrityError, match="images.*symlink"):
        store.verify("a1")
    with pytest.raises(IntegrityError, match="symlink"):
        store.fetch("a1", tmp_path / "staging")


def test_in_place_refuses_an_empty_chunk_list_for_a_non_empty_file(local, tmp_path):
    store, art = local
    (art / "images" / "core-1.img").write_bytes(b"\0" * 100)  # any bytes would do with no chunk to check

    def no_chunks(raw):
        entry = next(f for f in raw["files"] if f["path"] == "images/core-1.img")
        entry.update(chunks=[], digest=_file_digest(100))

    _rewrite(art, no_chunks)
    with pytest.raises(IntegrityError, match="core-1.img"):
        store.verify("a1")
    with pytest.raises(IntegrityError, match="core-1.img"):
        store.fetch("a1", tmp_path / "staging")


def _file_digest(size: int) -> str:
    from thaw.store.digest import file_digest

    return file_digest(size, [])


@pytest.mark.parametrize("path", ["../../secret", "/etc/hostname", "images/../../secret"])
def test_in_place_refuses_paths_outside_the_artifact(local, tmp_path, path):
    store, art = local
    secret = _attacker_file(tmp_path / "secret")
    _rewrite(art, lambda raw: raw["files"].append({**_entry(tmp_path, "secret"), "path": path}))

    with pytest.raises(IntegrityError):
        store.verify("a1")
    with pytest.raises(IntegrityError):
        store.fetch("a1", tmp_path / "staging")
    assert secret.read_bytes() == ATTACK


def test_publishing_refuses_a_symlink_in_the_staged_tree(tmp_path):
    store = DirectoryStore(tmp_path / "store")
    secret = _attacker_file(tmp_path / "secret", b"the host's shadow file")
    with pytest.raises(IntegrityError, match="symlink"):
        with store.stage("a1") as staged:
            (staged.dir / "images").mkdir()
            (staged.dir / "images" / "core-1.img").write_bytes(b"core")
            (staged.dir / "images" / "pages-1.img").symlink_to(secret)
            staged.published = bare_manifest("a1")
    assert not store.exists("a1")


# ---- a shared directory store staged on local disk (?fetch=copy) ---------------------------------------


@pytest.fixture
def shared(tmp_path, publish):
    # the store sits deeper than the staging, so one '../../../x' names different files on each side
    root = tmp_path / "s" / "t" / "shared"
    publish(DirectoryStore(root), "a1", {"images/pages-1.img": 2 * MIB, "images/core-1.img": 100})
    return open_store(f"dir://{root}?fetch=copy"), root / "a1", tmp_path / "node" / "staging"


def test_copy_never_writes_outside_its_staging_directory(shared, tmp_path):
    store, art, staging = shared
    victim = _victim(tmp_path / "victim")             # staging/<copy>/../../../victim
    _attacker_file(tmp_path / "s" / "victim")          # shared/a1/../../../victim
    _rewrite(art, lambda raw: raw["files"].append({**_entry(tmp_path / "s", "victim"), "path": "../../../victim"}))

    with pytest.raises(REFUSED):
        store.fetch("a1", staging)
    assert victim.read_bytes() == PRECIOUS
    _nothing_left(staging)


def test_copy_never_writes_an_absolute_path(shared, tmp_path):
    store, art, staging = shared
    victim = _victim(tmp_path / "victim")
    _rewrite(art, lambda raw: raw["files"].append({**_entry(tmp_path, "victim"), "path": str(victim)}))

    with pytest.raises(REFUSED):
        store.fetch("a1", staging)
    assert victim.read_bytes() == PRECIOUS
    _nothing_left(staging)


def test_copy_never_writes_bytes_that_do_not_match_their_digest(shared, tmp_path):
    """The digest promises other bytes than the store holds: they must not land anywhere, not even briefly."""
    store, art, staging = shared
    victim = _victim(tmp_path / "victim")
    _attacker_file(tmp_path / "s" / "victim")
    promised = _attacker_file(tmp_path / "promised", b"x" * len(ATTACK))
    _rewrite(art, lambda raw: raw["files"].append({**_entry(promised.parent, "promised"),
                                                   "path": "../../../victim"}))

    with pytest.raises(REFUSED):
        store.fetch("a1", staging)
    assert victim.read_bytes() == PRECIOUS
    _nothing_left(staging)


def test_copy_refuses_a_symlinked_file(shared, tmp_path):
    store, art, staging = shared
    outside = _attacker_file(tmp_path / "elsewhere.img", (art / "images" / "core-1.img").read_bytes())
    (art / "images" / "core-1.img").unlink()
    (art / "images" / "core-1.img").symlink_to(outside)

    with pytest.raises(IntegrityError, match="symlink"):
        store.fetch("a1", staging)
    _nothing_left(staging)


def test_copy_refuses_an_empty_chunk_list_for_a_non_empty_file(shared, tmp_path):
    store, art, staging = shared
    (art / "images" / "core-1.img").write_bytes(ATTACK)

    def no_chunks(raw):
        entry = next(f for f in raw["files"] if f["path"] == "images/core-1.img")
        entry.update(size=len(ATTACK), chunks=[], digest=_file_digest(len(ATTACK)))

    _rewrite(art, no_chunks)
    with pytest.raises(IntegrityError, match="core-1.img"):
        store.fetch("a1", staging)
    _nothing_left(staging)


def test_copy_stages_privately(shared):
    store, _art, staging = shared
    fetched = store.fetch("a1", staging)
    try:
        assert stat.S_IMODE(fetched.dir.stat().st_mode) == 0o700
        for p in fetched.dir.rglob("*"):
            assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    finally:
        fetched.cleanup()


# ---- S3 ----------------------------------------------------------------------------------------------


@pytest.fixture
def s3(s3_prefix_url, publish, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path / "scratch")
    manifest, _ = publish(store, "a1", {"images/pages-1.img": 2 * MIB + 5, "images/core-1.img": 100})
    return store, manifest, tmp_path / "node" / "staging"


def _s3_rewrite(store, change) -> None:
    key = f"{store.prefix}a1/manifest.json"
    raw = json.loads(store._client.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    change(raw)
    store._client.put_object(Bucket=store.bucket, Key=key, Body=json.dumps(raw).encode())


def _s3_put(store, manifest, rel: str, data: bytes) -> None:
    store._client.put_object(Bucket=store.bucket, Key=f"{store.prefix}a1/{manifest.artifact_id}/{rel}", Body=data)


@pytest.mark.parametrize("bad_bytes", [False, True], ids=["matching", "not-matching"])
def test_s3_fetch_never_writes_outside_its_staging_directory(s3, tmp_path, bad_bytes):
    store, manifest, staging = s3
    victim = _victim(tmp_path / "node" / "victim")  # staging/<copy>/../../victim
    rel = "../../victim"
    _s3_put(store, manifest, rel, ATTACK)
    promised = _attacker_file(tmp_path / "promised", b"y" * len(ATTACK) if bad_bytes else ATTACK)
    _s3_rewrite(store, lambda raw: raw["files"].append(
        {**_entry(promised.parent, "promised", chunk_size=raw["chunk_size"]), "path": rel}))

    with pytest.raises(REFUSED):
        store.fetch("a1", staging)
    assert victim.read_bytes() == PRECIOUS
    _nothing_left(staging)


def test_s3_fetch_never_writes_an_absolute_path(s3, tmp_path):
    store, manifest, staging = s3
    victim = _victim(tmp_path / "victim")
    _s3_put(store, manifest, str(victim), ATTACK)
    _attacker_file(tmp_path / "promised")
    _s3_rewrite(store, lambda raw: raw["files"].append(
        {**_entry(tmp_path, "promised", chunk_size=raw["chunk_size"]), "path": str(victim)}))

    with pytest.raises(REFUSED):
        store.fetch("a1", staging)
    with pytest.raises(REFUSED):
        store.verify("a1")
    assert victim.read_bytes() == PRECIOUS
    _nothing_left(staging)


def test_s3_refuses_an_empty_chunk_list_for_a_non_empty_file(s3, tmp_path):
    store, manifest, staging = s3
    _s3_put(store, manifest, "images/core-1.img", ATTACK)

    def no_chunks(raw):
        entry = next(f for f in raw["files"] if f["path"] == "images/core-1.img")
        entry.update(size=len(ATTACK), chunks=[], digest=_file_digest(len(ATTACK)))

    _s3_rewrite(store, no_chunks)
    with pytest.raises(IntegrityError, match="core-1.img"):
        store.fetch("a1", staging)
    _nothing_left(staging)


def test_s3_publish_refuses_a_symlink_in_the_staged_tree(s3_prefix_url, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path / "scratch")
    secret = _attacker_file(tmp_path / "secret", b"the host's shadow file")
    with pytest.raises(IntegrityError, match="symlink"):
        with store.stage("a2") as staged:
            (staged.dir / "images").mkdir()
            (staged.dir / "images" / "pages-1.img").symlink_to(secret)
            staged.published = bare_manifest("a2")
    assert not store.exists("a2")
    keys = store._client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix).get("Contents", [])
    assert keys == [], "nothing of the host file was uploaded"


def test_s3_fetch_stages_privately(s3):
    store, _manifest, staging = s3
    fetched = store.fetch("a1", staging)
    try:
        assert stat.S_IMODE(fetched.dir.stat().st_mode) == 0o700
        for p in fetched.dir.rglob("*"):
            assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    finally:
        fetched.cleanup()


def test_s3_scratch_is_private_and_never_a_shared_tmp_path(s3_prefix_url, tmp_path, publish):
    from thaw.store.s3 import S3Store

    store = open_store(s3_prefix_url, scratch=tmp_path / "scratch")
    with store.stage("a3") as staged:
        assert stat.S_IMODE(staged.dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "scratch").stat().st_mode) == 0o700
        (staged.dir / "f").write_bytes(b"x")
        staged.published = bare_manifest("a3")
    bare = S3Store.from_url(s3_prefix_url)
    assert not str(getattr(bare, "scratch", "") or "").startswith(os.environ.get("TMPDIR", "/tmp")), \
        "no predictable scratch path in a shared temporary directory"
