"""Self-describing, signed artifacts: the digest covers the whole manifest; a node can pin a digest or
require a signature by a key it trusts, and everything else is refused before anything is staged."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from thaw.config import Settings
from thaw.errors import ConfigError, IntegrityError, UntrustedArtifact
from thaw.store import DirectoryStore, Signer, Trust, open_store, parse_reference, store_for
from thaw.store.manifest import Manifest, ReleasedMemory, SourceInfo, WorkerInfo
from thaw.store.signing import generate

MIB = 1 << 20


def full_manifest(name: str) -> Manifest:
    return Manifest(artifact_id="", name=name, source=SourceInfo(host="node-1", kernel="6.18", criu_version="4.1"),
                    worker=WorkerInfo(name="w", argv=["python", "serve.py"], pid=42, canary={"tokens": [1, 2, 3]},
                                      hooks=["kv"], freeze_report={"kv": {"released": 1}}),
                    sandbox={"net_key": "extRootNetNS", "stdio": ["/w.log"]}, gpus=[{"uuid": "GPU-1", "name": "H200"}],
                    memory_released=[ReleasedMemory(tag="kv", bytes=1 << 30)], timings={"dump": 1.5})


def publish(store, name: str = "a1", files: dict[str, bytes] | None = None) -> Manifest:
    with store.stage(name) as staged:
        for rel, data in (files or {"images/pages-1.img": os.urandom(MIB + 5), "images/core-1.img": b"core"}).items():
            (staged.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged.dir / rel).write_bytes(data)
        staged.published = full_manifest(name)
    assert staged.published is not None
    return staged.published


def rewrite(path: Path, change) -> None:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


@pytest.fixture
def keys(tmp_path):
    private, public, key_id = generate(tmp_path / "keys")
    other_private, other_public, _ = generate(tmp_path / "keys", "other")
    return {"private": private, "public": public, "id": key_id, "other_private": other_private,
            "other_public": other_public}


# ---- the digest covers everything ---------------------------------------------------------------------

CHANGES = {
    "canary": lambda r: r["worker"].__setitem__("canary", {"tokens": [1, 2, 4]}),
    "canary removed": lambda r: r["worker"].__setitem__("canary", None),
    "name": lambda r: r.__setitem__("name", "a2"),
    "artifact id": lambda r: r.__setitem__("artifact_id", "0" * 32),
    "timings": lambda r: r["timings"].__setitem__("dump", 9.0),
    "sandbox": lambda r: r["sandbox"].__setitem__("stdio", ["/etc/passwd"]),
    "gpus": lambda r: r["gpus"][0].__setitem__("uuid", "GPU-2"),
    "argv": lambda r: r["worker"]["argv"].append("--evil"),
    "created_at": lambda r: r.__setitem__("created_at", "2020-01-01T00:00:00Z"),
    "source": lambda r: r["source"].__setitem__("host", "elsewhere"),
    "memory released": lambda r: r["memory_released"].clear(),
    "a file": lambda r: r["files"].pop(),
}


@pytest.mark.parametrize("what", list(CHANGES))
def test_any_change_to_the_manifest_changes_the_digest(tmp_path, what):
    manifest = publish(DirectoryStore(tmp_path / "s"))
    raw = json.loads(manifest.to_json())
    CHANGES[what](raw)
    changed = Manifest.model_validate(raw)
    assert changed.digest != manifest.digest
    assert Manifest.parse(manifest.to_json()).digest == manifest.digest, "a manifest read back keeps its digest"


def test_a_pinned_digest_refuses_a_changed_manifest_before_anything_is_staged(tmp_path):
    store = open_store(f"dir://{tmp_path / 's'}?fetch=copy")
    manifest = publish(store)
    staging = tmp_path / "staging"
    assert store.verify("a1", expected_digest=manifest.digest) == manifest
    store.fetch("a1", staging, expected_digest=manifest.digest).cleanup()

    rewrite(tmp_path / "s" / "a1" / "manifest.json", lambda r: r["worker"].__setitem__("canary", None))
    store.verify("a1")  # files intact: without a pin or a key the changed manifest still verifies ...
    with pytest.raises(UntrustedArtifact, match=f"not the expected {manifest.digest}"):
        store.verify("a1", expected_digest=manifest.digest)  # ... the pin sees it
    with pytest.raises(UntrustedArtifact):
        store.fetch("a1", staging, expected_digest=manifest.digest)
    assert list(staging.iterdir()) == []


def test_references_are_name_or_name_at_digest():
    digest = "sha256:" + "ab" * 32
    assert parse_reference("a1") == ("a1", None)
    assert parse_reference(f"a1@{digest}") == ("a1", digest)
    for bad in ("a1@xxh3_128:00", "a1@sha256:ABC", "a1@", "a1\n", "A1", "a1@sha256:" + "ab" * 32 + "\n"):
        with pytest.raises(ConfigError):
            parse_reference(bad)


# ---- signatures ---------------------------------------------------------------------------------------


def test_a_signed_artifact_is_accepted_by_a_node_that_trusts_the_key(tmp_path, keys):
    signing = DirectoryStore(tmp_path / "s", signer=Signer.load(keys["private"]))
    manifest = publish(signing)
    assert manifest.signature is not None and manifest.signature.key_id == keys["id"]

    node = open_store(f"dir://{tmp_path / 's'}?fetch=copy", trust=Trust.load([keys["public"]]))
    assert node.verify("a1").digest == manifest.digest
    node.fetch("a1", tmp_path / "staging").cleanup()
    assert node.trust.describe(manifest) == f"signed by trusted key {keys['id']}"


@pytest.mark.parametrize("tamper", ["canary", "canary removed", "sandbox", "timings", "name"])
def test_a_manifest_changed_after_signing_is_refused(tmp_path, keys, tamper):
    publish(DirectoryStore(tmp_path / "s", signer=Signer.load(keys["private"])))
    rewrite(tmp_path / "s" / "a1" / "manifest.json", CHANGES[tamper])
    node = open_store(f"dir://{tmp_path / 's'}?fetch=copy", trust=Trust.load([keys["public"]]))
    staging = tmp_path / "staging"

    with pytest.raises(IntegrityError, match="signature by key .* does not match|found under 'a1'"):
        node.fetch("a1", staging)
    with pytest.raises(IntegrityError):
        node.verify("a1")
    assert not staging.exists() or list(staging.iterdir()) == []


def test_unsigned_or_foreign_or_stripped_signatures_are_refused(tmp_path, keys):
    publish(DirectoryStore(tmp_path / "s"), "plain")
    publish(DirectoryStore(tmp_path / "s", signer=Signer.load(keys["other_private"])), "foreign")
    publish(DirectoryStore(tmp_path / "s", signer=Signer.load(keys["private"])), "stripped")
    rewrite(tmp_path / "s" / "stripped" / "manifest.json", lambda r: r.__setitem__("signature", None))
    node = DirectoryStore(tmp_path / "s", trust=Trust.load([keys["public"]]))

    with pytest.raises(UntrustedArtifact, match="'plain' is not signed"):
        node.fetch("plain", tmp_path / "staging")
    with pytest.raises(UntrustedArtifact, match="which this node does not trust"):
        node.fetch("foreign", tmp_path / "staging")
    with pytest.raises(UntrustedArtifact, match="'stripped' is not signed"):
        node.verify("stripped")
    # a node that trusts no key restores all three (their files are intact), and says so
    assert DirectoryStore(tmp_path / "s").trust.describe(node.manifest("foreign")).endswith("trusts no keys)")


def test_a_signed_artifact_on_s3_is_checked_before_anything_is_downloaded(s3_prefix_url, tmp_path, keys):
    writer = open_store(s3_prefix_url, scratch=tmp_path / "scratch", signer=Signer.load(keys["private"]))
    manifest = publish(writer)
    reader = open_store(s3_prefix_url, trust=Trust.load([keys["public"]]))
    reader.fetch("a1", tmp_path / "ok", expected_digest=manifest.digest).cleanup()

    key = f"{writer.prefix}a1/manifest.json"
    raw = json.loads(writer._client.get_object(Bucket=writer.bucket, Key=key)["Body"].read())
    raw["worker"]["canary"] = None
    writer._client.put_object(Bucket=writer.bucket, Key=key, Body=json.dumps(raw).encode())
    with pytest.raises(UntrustedArtifact, match="does not match"):
        reader.fetch("a1", tmp_path / "staging")
    assert not (tmp_path / "staging").exists() or list((tmp_path / "staging").iterdir()) == []


def test_settings_configure_signing_and_trust(tmp_path, keys, monkeypatch):
    monkeypatch.setenv("THAW_SIGNING_KEY", str(keys["private"]))
    monkeypatch.setenv("THAW_TRUSTED_KEYS", f"{keys['public']},{keys['other_public']}")
    settings = Settings(home=tmp_path / "home")
    store = store_for(settings)
    assert store.signer is not None and store.signer.key_id == keys["id"]
    assert len(store.trust.keys) == 2
    assert publish(store).signature is not None


def test_keys_are_written_privately_never_overwritten_and_checked_on_load(tmp_path, keys):
    assert stat.S_IMODE(os.stat(keys["private"]).st_mode) == 0o600
    with pytest.raises(ConfigError, match="already exists"):
        generate(tmp_path / "keys")
    os.chmod(keys["private"], 0o644)
    with pytest.raises(ConfigError, match="can be read by other users"):
        Signer.load(keys["private"])
    with pytest.raises(ConfigError, match="not a PEM public key"):
        Trust.load([keys["private"]])
    with pytest.raises(ConfigError, match="cannot read"):
        Trust.load([tmp_path / "missing.pub"])


# ---- names, renames, empty artifacts --------------------------------------------------------------------


def test_a_renamed_artifact_is_refused_clearly(tmp_path):
    store = DirectoryStore(tmp_path / "s")
    publish(store, "old")
    (tmp_path / "s" / "old").rename(tmp_path / "s" / "new")
    with pytest.raises(IntegrityError, match="belongs to artifact 'old', but was found under 'new'"):
        store.fetch("new", tmp_path / "staging")
    assert store.list() == [], "never offered for restore"
    assert store.delete("new") == "artifact", "but it can be removed"


def test_a_renamed_s3_artifact_is_refused_and_never_reads_the_other_artifacts_data(s3_prefix_url, tmp_path):
    store = open_store(s3_prefix_url, scratch=tmp_path / "scratch")
    publish(store, "old")
    body = store._client.get_object(Bucket=store.bucket, Key=f"{store.prefix}old/manifest.json")["Body"].read()
    store._client.put_object(Bucket=store.bucket, Key=f"{store.prefix}new/manifest.json", Body=body)
    with pytest.raises(IntegrityError, match="found under 'new'"):
        store.fetch("new", tmp_path / "staging")


def test_names_with_a_trailing_newline_or_control_characters_are_refused(tmp_path):
    store = DirectoryStore(tmp_path / "s")
    for bad in ("a1\n", "a1\r", "a\x1b1", "a1 ", "\na1"):
        with pytest.raises(ConfigError, match="not a valid name"):
            publish(store, bad)
    assert sorted(os.listdir(tmp_path / "s")) == [".staging", ".trash"]


def test_an_artifact_without_files_is_never_published(tmp_path):
    store = DirectoryStore(tmp_path / "s")
    with pytest.raises(IntegrityError, match="holds no files"):
        with store.stage("empty") as staged:
            (staged.dir / "images").mkdir()
            staged.published = full_manifest("empty")
    assert not store.exists("empty")
