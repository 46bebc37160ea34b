"""S3Store against a real S3-compatible server process (moto_server), not a mocked client."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from thaw.errors import ArtifactNotFound, BusyError, ConfigError, IntegrityError
from thaw.store import open_store
from thaw.store.s3 import S3Store

HERE = Path(__file__).parent
MIB = 1 << 20


def _keys(store: S3Store, under: str = "") -> list[str]:
    out = store._client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + under)
    return sorted(o["Key"][len(store.prefix):] for o in out.get("Contents", []))


def test_round_trip_is_chunked_parallel_and_verified(s3_prefix_url, publish, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path / "scratch")
    sizes = {"images/pages-1.img": 12 * MIB + 123, "images/core-1.img": 2000, "images/empty.img": 0}
    manifest, contents = publish(store, "art", sizes)

    assert manifest.chunk_size == MIB
    assert {f.path: len(f.chunks) for f in manifest.files}["images/pages-1.img"] == 13
    assert [m.name for m in store.list()] == ["art"]
    assert store.manifest("art").digest == manifest.digest
    assert not list((tmp_path / "scratch").iterdir()), "the local scratch copy is removed after upload"

    fetched = store.fetch("art", tmp_path / "staging")
    assert not fetched.in_place and fetched.dir.parent == tmp_path / "staging"
    for rel, data in contents.items():
        assert (fetched.dir / rel).read_bytes() == data
    assert (fetched.dir / "manifest.json").is_file()
    assert fetched.stats["bytes"] == sum(sizes.values()) and fetched.stats["read_gbps"] > 0
    store.verify("art")
    fetched.cleanup()
    assert not fetched.dir.exists()


def test_publish_refuses_a_taken_name(s3_prefix_url, publish, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path)
    publish(store, "art", {"a": 10})
    with pytest.raises(BusyError, match="already exists"):
        publish(store, "art", {"a": 20})
    assert len(_keys(store)) == 2, "the refused publish left no data behind"


def test_names_with_dotdot_or_slash_are_refused(s3_prefix_url, publish, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path)
    for bad in ("../x", "a/b", "a..b", "/abs", ""):
        with pytest.raises(ConfigError, match="not a valid name"):
            publish(store, bad, {"a": 1})
        with pytest.raises(ConfigError):
            store.manifest(bad)


def test_readers_never_see_an_artifact_before_its_manifest_lands(s3_prefix_url, publish, tmp_path):
    """Hold the publisher just before its manifest upload; a second node sees nothing until then."""
    writer = open_store(s3_prefix_url, scratch=tmp_path / "w")
    reader = open_store(s3_prefix_url)
    reached, go = threading.Event(), threading.Event()
    put_object = writer._client.put_object

    def held_put_object(**kw):
        if kw["Key"].endswith("/manifest.json"):
            reached.set()
            assert go.wait(30)
        return put_object(**kw)

    writer._client.put_object = held_put_object
    result = {}
    t = threading.Thread(target=lambda: result.update(m=publish(writer, "art", {"images/p.img": 6 * MIB})[0]))
    t.start()
    assert reached.wait(30)
    assert any(k.startswith("art/") and not k.endswith("manifest.json") for k in _keys(reader)), "data uploaded"
    assert reader.list() == []
    with pytest.raises(ArtifactNotFound):
        reader.fetch("art", tmp_path / "r")
    go.set()
    t.join(30)
    assert [m.artifact_id for m in reader.list()] == [result["m"].artifact_id]
    reader.verify("art")


def test_failed_upload_leaves_nothing(s3_prefix_url, publish, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path)
    upload_part = store._client.upload_part
    calls = []

    def failing_upload_part(**kw):
        calls.append(kw["PartNumber"])
        if kw["PartNumber"] == 2:
            raise ConnectionResetError("injected failure")
        return upload_part(**kw)

    store._client.upload_part = failing_upload_part
    with pytest.raises(Exception, match="injected failure"):
        publish(store, "art", {"images/p.img": 12 * MIB})
    assert calls
    assert store.list() == [] and _keys(store) == []
    assert store._client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", []) == []


def test_corrupted_chunk_is_caught_while_fetching(s3_prefix_url, publish, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path)
    manifest, contents = publish(store, "art", {"images/p.img": 3 * MIB})
    key = f"{store.prefix}art/{manifest.artifact_id}/images/p.img"
    bad = bytearray(contents["images/p.img"])
    bad[MIB + 7] ^= 0x01
    store._client.put_object(Bucket=store.bucket, Key=key, Body=bytes(bad))

    with pytest.raises(IntegrityError, match=r"images/p.img chunk 1 does not match its digest"):
        store.fetch("art", tmp_path / "staging")
    assert list((tmp_path / "staging").iterdir()) == [], "no partial copy left in staging"
    with pytest.raises(IntegrityError, match="chunk 1"):
        store.verify("art")
    assert [m.name for m in store.list()] == ["art"], "a damaged artifact is reported, not deleted"


def test_missing_file_is_reported(s3_prefix_url, publish, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path)
    manifest, _ = publish(store, "art", {"images/a.img": 100, "images/b.img": 100})
    store._client.delete_object(Bucket=store.bucket, Key=f"{store.prefix}art/{manifest.artifact_id}/images/b.img")
    with pytest.raises(IntegrityError, match="images/b.img is missing"):
        store.fetch("art", tmp_path / "staging")


def test_delete_removes_manifest_and_data(s3_prefix_url, publish, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path)
    publish(store, "art", {"images/p.img": 6 * MIB, "x": 1})
    publish(store, "other", {"x": 1})
    store.delete("art")
    assert [m.name for m in store.list()] == ["other"]
    assert not [k for k in _keys(store) if k.startswith("art/")]
    with pytest.raises(ArtifactNotFound):
        store.delete("art")


def test_racing_publishers_in_separate_processes(s3_prefix_url, tmp_path):
    """Three processes publish one name at the same instant: one wins, the others get BusyError."""
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, str(HERE / "publish_one.py"), s3_prefix_url, "race",
                               str(7 * MIB), str(start)], stdout=subprocess.PIPE, text=True,
                              env={**__import__("os").environ, "SCRATCH": str(tmp_path)})
             for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    winners = [o for o in outs if o[0] == "won"]
    assert len(winners) == 1 and sum(o == ["busy"] for o in outs) == 2, outs
    store = open_store(s3_prefix_url)
    manifest = store.verify("race")
    assert manifest.artifact_id == winners[0][1]
    fetched = store.fetch("race", tmp_path / "staging")
    assert set((fetched.dir / "images/pages.img").read_bytes()) == {int(winners[0][2])}
    data_ids = {k.split("/")[1] for k in _keys(store, "race/") if not k.endswith("manifest.json")}
    assert data_ids == {manifest.artifact_id}, "the losers removed their files"


def test_sweep_removes_crash_debris_only(s3_prefix_url, publish, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path / "scratch")
    manifest, _ = publish(store, "art", {"images/p.img": 100})
    c = store._client
    c.put_object(Bucket=store.bucket, Key=f"{store.prefix}art/deadbeef/images/p.img", Body=b"debris")
    c.put_object(Bucket=store.bucket, Key=f"{store.prefix}half/cafe/images/p.img", Body=b"debris")
    (tmp_path / "scratch" / "stage-dead").mkdir(parents=True)
    assert store.sweep(older_than_s=3600) == 0, "young debris may be an upload in progress"
    # created only now: moto reports a fixed 2010 'Initiated' time for every multipart upload
    c.create_multipart_upload(Bucket=store.bucket, Key=f"{store.prefix}half/cafe/images/q.img")
    assert store.sweep(older_than_s=0) == 4
    assert _keys(store) == sorted([f"art/{manifest.artifact_id}/images/p.img", "art/manifest.json"])
    store.verify("art")


def test_url_options_and_errors(s3_url, tmp_path):
    bucket, _, query = s3_url[len("s3://"):].partition("?")
    store = S3Store.from_url(f"s3://{bucket}/a/b/?{query}&workers=3&chunk_mib=2")
    assert (store.prefix, store.workers, store.chunk_size) == ("a/b/", 3, 2 * MIB)
    with pytest.raises(ConfigError, match="unknown option"):
        S3Store.from_url(f"s3://{bucket}?colour=blue")
    with pytest.raises(ConfigError, match="needs a bucket"):
        S3Store.from_url("s3:///prefix")
    with pytest.raises(ConfigError, match="no bucket"):
        S3Store.from_url(f"s3://no-such-bucket?{query}").list()


def test_thaw_gc_aborts_the_multipart_upload_of_a_publisher_that_was_killed(s3_prefix_url, tmp_path):
    """Before: nothing ever aborted an upload whose publisher died (S3 keeps its parts, and bills them, forever)."""
    home = tmp_path / "home"
    scratch = home / "staging" / ".scratch"
    killed = subprocess.run([sys.executable, str(HERE / "publish_one.py"), s3_prefix_url, "big", str(12 * MIB), "0"],
                            env={**os.environ, "SCRATCH_DIR": str(scratch), "THAW_FAULT": "store.upload:kill"},
                            check=False, capture_output=True, timeout=120)
    assert killed.returncode == -9
    store = open_store(s3_prefix_url, scratch=scratch)
    uploads = store._client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", [])
    assert len(uploads) == 1 and len(os.listdir(scratch)) == 1

    gc = subprocess.run([str(Path(sys.executable).with_name("thaw")), "gc", "--home", str(home),
                         "--store", s3_prefix_url], check=False, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "COLUMNS": "250"})

    assert gc.returncode == 0, gc.stderr
    assert "1 store staging entries and uploads" in gc.stdout
    assert store._client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", []) == []
    assert os.listdir(scratch) == [] and _keys(store) == []
