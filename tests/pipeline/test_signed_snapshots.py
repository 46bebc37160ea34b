"""Signed snapshots and pinned restores with real workers and real CRIU: a node that trusts a key restores what
that key signed, and refuses, before anything runs, what it did not sign or what changed after signing."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from thaw import pipeline
from thaw.config import Settings
from thaw.errors import CheckpointError, UntrustedArtifact
from thaw.store import store_for
from thaw.store.signing import generate
from workers import processes_of, state

pytestmark = pytest.mark.criu


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    private, public, _ = generate(tmp_path / "keys")
    _, other_public, _ = generate(tmp_path / "keys", "other")
    return {"private": private, "public": public, "other_public": other_public}


def no_restore_ran(settings: Settings) -> None:
    assert [i.origin for i in pipeline.list_instances(settings)] == ["launched"]
    assert processes_of(settings.home) == []


def test_a_signed_snapshot_restores_on_a_trusting_node_and_a_tampered_one_is_refused(settings: Settings,
                                                                                   launch_worker, keys) -> None:
    launch_worker()
    signing = settings.model_copy(update={"signing_key": keys["private"]})
    snap = pipeline.snapshot(signing, "w", "a1")
    assert snap.manifest.signature is not None
    assert store_for(settings).manifest("a1").digest == snap.manifest.digest, "the result is what was published"

    trusting = settings.model_copy(update={"trusted_keys": [keys["public"]]})
    restored = pipeline.restore(trusting, "a1", name="copy", expected_digest=snap.manifest.digest)
    assert state(restored.instance.dir)["outcome"] == "thawed" and restored.canary_checked
    pipeline.stop(settings, "copy")

    manifest = Path(settings.store_url) / "a1" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["worker"]["canary"] = None  # would turn the canary gate off
    manifest.write_text(json.dumps(raw))
    with pytest.raises(UntrustedArtifact, match="signature by key .* does not match"):
        pipeline.restore(trusting, "a1", name="evil")
    with pytest.raises(UntrustedArtifact, match=f"not the expected {snap.manifest.digest}"):
        pipeline.restore(settings, "a1", name="evil", expected_digest=snap.manifest.digest)
    assert [i.name for i in pipeline.list_instances(settings) if i.origin == "restored"] == ["copy"]
    assert processes_of(settings.home) == []


def test_a_node_that_trusts_keys_refuses_an_unsigned_snapshot_before_anything_runs(settings: Settings,
                                                                                     launch_worker, keys) -> None:
    launch_worker()
    pipeline.snapshot(settings, "w", "a1")  # no signing key: unsigned
    node = settings.model_copy(update={"trusted_keys": [keys["public"], keys["other_public"]]})
    with pytest.raises(UntrustedArtifact, match="'a1' is not signed, and this node accepts only signed artifacts"):
        pipeline.restore(node, "a1", name="copy")
    no_restore_ran(settings)
    assert not settings.staging_dir.exists() or not any(settings.staging_dir.iterdir()), "nothing was fetched"


def test_a_dump_that_produced_no_images_fails_the_snapshot_and_the_worker_stays(settings: Settings, launch_worker,
                                                                                monkeypatch) -> None:
    original = launch_worker()
    # thaw.pipeline re-exports the function snapshot(), which hides the module of that name
    snapshot_module = importlib.import_module("thaw.pipeline.snapshot")
    monkeypatch.setattr(snapshot_module, "dump", lambda options, criu: None)  # "succeeds", writes nothing

    with pytest.raises(CheckpointError, match="produced no image files"):
        pipeline.snapshot(settings, "w", "a1")

    store = store_for(settings)
    assert not store.exists("a1") and store.list() == []
    assert original.alive()
    monkeypatch.undo()
    pipeline.snapshot(settings, "w", "a1")  # the worker was rolled back: a real snapshot still works
    no_restore_ran(settings)
    assert store.verify("a1").name == "a1"
