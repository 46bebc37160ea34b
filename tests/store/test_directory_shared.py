"""DirectoryStore as a shared ReadWriteMany volume: several processes (agents) publish and read at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thaw.errors import ArtifactNotFound, BusyError, ConfigError
from thaw.store import DirectoryStore, open_store

HERE = Path(__file__).parent
MIB = 1 << 20


def _publisher(root: Path, name: str, size: int, start_at: float, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "publish_one.py"), str(root), name, str(size),
                             str(start_at), *extra], stdout=subprocess.PIPE, text=True)


def test_racing_publishers_of_one_name_cannot_corrupt_each_other(tmp_path):
    root = tmp_path / "shared"
    start = time.time() + 1.5
    procs = [_publisher(root, "race", 16 * MIB, start) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    winners = [o for o in outs if o[0] == "won"]
    assert len(winners) == 1 and sum(o == ["busy"] for o in outs) == 3, outs

    store = DirectoryStore(root)
    manifest = store.verify("race")
    assert manifest.artifact_id == winners[0][1]
    data = (root / "race" / "images" / "pages.img").read_bytes()
    assert len(data) == 16 * MIB and set(data) == {int(winners[0][2])}, "exactly the winner's bytes"
    assert list((root / ".staging").iterdir()) == [], "losers cleaned up their staging"


def test_readers_never_see_a_partial_artifact(tmp_path):
    """While six processes publish, every artifact a reader lists is complete and verifies."""
    root = tmp_path / "shared"
    store = DirectoryStore(root)
    start = time.time() + 1.0
    procs = [_publisher(root, f"a{i}", (4 + 3 * i) * MIB, start + 0.05 * i) for i in range(6)]
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "publishers did not finish"
        for m in store.list():
            store.verify(m.name)  # raises IntegrityError on a partial artifact
            seen.add(m.name)
    assert all(p.wait() == 0 for p in procs)
    assert {m.name for m in store.list()} == {f"a{i}" for i in range(6)}
    for name in seen | {f"a{i}" for i in range(6)}:
        store.verify(name)


def test_crashed_publisher_leaves_only_sweepable_debris(tmp_path):
    root = tmp_path / "shared"
    p = _publisher(root, "crash", 8 * MIB, 0, "--die-after-write")
    p.communicate(timeout=60)
    assert p.returncode == -9
    store = DirectoryStore(root)
    assert store.list() == [] and not store.exists("crash")
    with pytest.raises(ArtifactNotFound):
        store.fetch("crash", tmp_path)
    debris = list((root / ".staging").iterdir())
    assert len(debris) == 1 and (debris[0] / "images" / "pages.img").stat().st_size == 8 * MIB

    # its owner (named in the entry) died on this node: swept at once, with no age rule
    assert store.sweep() == 1
    assert list((root / ".staging").iterdir()) == []
    p = _publisher(root, "crash", MIB, 0)
    assert p.communicate(timeout=60)[0].split()[0] == "won"
    store.verify("crash")


def test_delete_is_atomic_for_readers(tmp_path, publish):
    store = DirectoryStore(tmp_path / "shared")
    publish(store, "gone", {"images/p.img": MIB})
    other_node = open_store(f"dir://{tmp_path / 'shared'}")
    assert other_node.exists("gone")
    store.delete("gone")
    assert not other_node.exists("gone") and other_node.list() == []
    assert list((tmp_path / "shared" / ".trash").iterdir()) == []


def test_publish_refuses_a_taken_name_and_bad_names(tmp_path, publish):
    store = DirectoryStore(tmp_path / "shared")
    publish(store, "one", {"x": 1})
    with pytest.raises(BusyError):
        publish(store, "one", {"x": 2})
    for bad in ("../escape", "a/b", "x..y"):
        with pytest.raises(ConfigError, match="not a valid name"):
            publish(store, bad, {"x": 1})
    assert sorted(os.listdir(tmp_path / "shared")) == [".staging", ".trash", "one"]


def test_staging_of_another_node_is_swept_only_by_age(tmp_path):
    root = tmp_path / "shared"
    store = DirectoryStore(root)
    # what a publisher on another node (another boot id) is writing right now, on the shared volume
    foreign = root / ".staging" / f"0badb007-4242-1.{'a' * 32}.other"
    (foreign / "images").mkdir(parents=True)

    assert store.sweep() == 0
    assert store.sweep(older_than_s=3600) == 0, "young staging may belong to a live publisher on another node"
    assert foreign.is_dir()
    assert store.sweep(older_than_s=0) == 1
    assert not foreign.exists()
