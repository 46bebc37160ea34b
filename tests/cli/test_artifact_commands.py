"""``thaw ls/inspect/verify/rm/restore/keys`` on artifacts someone else may have written: one clear line, the
right exit code, no traceback, and nothing from a manifest interpreted as markup or terminal control."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from thaw.store import DirectoryStore, Signer
from thaw.store.manifest import Manifest, SourceInfo, WorkerInfo

HOSTILE = "[bold red]PWNED[/] [link=http://x]click[/link] \x1b[2J\x07"


def publish(home: Path, name: str = "a1", *, signer: Signer | None = None, text: str = "w") -> DirectoryStore:
    store = DirectoryStore(home / "artifacts", signer=signer)
    with store.stage(name) as staged:
        (staged.dir / "images").mkdir()
        (staged.dir / "images" / "pages-1.img").write_bytes(os.urandom(4096))
        (staged.dir / "images" / "core-1.img").write_bytes(b"core")
        staged.published = Manifest(
            artifact_id="", name=name, source=SourceInfo(host=text, kernel=text, thaw_version=text),
            worker=WorkerInfo(name=text, argv=[text], canary={"x": 1}, hooks=[text]),
            gpus=[{"name": text, "uuid": text, "used_bytes": "lots"}], timings={text: 1.0})
    return store


def manifest_path(thaw, name: str = "a1") -> Path:
    return thaw.home / "artifacts" / name / "manifest.json"


def test_inspect_ls_and_verify_print_a_crafted_manifest_as_text(thaw) -> None:
    publish(thaw.home, text=HOSTILE)
    for args in (["inspect", "a1"], ["ls"], ["verify", "a1"]):
        done = thaw(*args)
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout and "\x07" not in done.stdout, "no terminal control from a manifest"
        assert "Traceback" not in done.stdout + done.stderr
    out = thaw.ok("inspect", "a1")
    assert "[bold red]PWNED[/]" in out, "markup shown literally, not interpreted"
    assert "\\x1b[2J" in out


def test_inspect_of_a_half_deleted_artifact_fails(thaw) -> None:
    publish(thaw.home)
    (thaw.home / "artifacts" / "a1" / "images" / "pages-1.img").unlink()
    thaw.fails("inspect", "a1", message="artifact 'a1' is incomplete: file images/pages-1.img is missing")


def test_rm_removes_a_leftover_directory_without_a_manifest_and_says_so(thaw) -> None:
    publish(thaw.home)
    manifest_path(thaw).unlink()
    thaw.fails("inspect", "a1", message="no artifact named 'a1'")
    assert "removed the leftover directory a1: it had no manifest" in thaw.ok("rm", "a1")
    assert not (thaw.home / "artifacts" / "a1").exists()


def test_rm_leaves_a_symlink_and_its_target_alone(thaw, tmp_path: Path) -> None:
    publish(thaw.home, "real")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "precious").write_text("keep")
    (thaw.home / "artifacts" / "a2").symlink_to(tmp_path / "elsewhere")
    thaw.fails("rm", "a2", message="is not an artifact")
    assert (tmp_path / "elsewhere" / "precious").read_text() == "keep"


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r["files"].append({**r["files"][0], "path": "../../etc/passwd"}), "leaves the artifact"),
    (lambda r: r["files"].append({**r["files"][0], "path": "/etc/passwd"}), "is absolute"),
    (lambda r: r.__setitem__("files", [{**r["files"][0], "chunks": []}]), "chunk digest(s)"),
    (lambda r: r["worker"].__setitem__("canary", float("nan")), "is not valid JSON"),
    (lambda r: r.__setitem__("gpus", "not a list"), "gpus"),
    (lambda r: r.__setitem__("chunk_size", 10 ** 30), "chunk_size"),
    (lambda r: r.__setitem__("extra", "[red]x[/]"), "extra"),
], ids=["dotdot", "absolute", "no-chunks", "nan", "gpus-shape", "huge-number", "unknown-field"])
def test_a_malformed_manifest_is_one_clear_error_everywhere(thaw, change, message: str) -> None:
    publish(thaw.home)
    path = manifest_path(thaw)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    for args in (["inspect", "a1"], ["verify", "a1"], ["restore", "a1"]):
        done = thaw.fails(*args, message=str(path))
        assert message in done.stderr
    assert thaw.json("ls") == [], "a malformed artifact is never offered"


def test_verify_and_restore_pin_a_digest(thaw) -> None:
    publish(thaw.home)
    digest = thaw.json("inspect", "a1")["digest"]
    assert thaw.ok("verify", f"a1@{digest}").startswith("ok a1: 2 files")
    data = json.loads(manifest_path(thaw).read_text())
    data["worker"]["canary"] = None  # the canary gate silently off: the digest changes
    manifest_path(thaw).write_text(json.dumps(data))
    thaw.fails("verify", f"a1@{digest}", message=f"not the expected {digest}")
    thaw.fails("restore", f"a1@{digest}", message=f"not the expected {digest}")
    thaw.fails("restore", "a1@sha256:abc", message="'sha256:abc' is not an artifact digest")


def test_a_node_with_trusted_keys_refuses_unsigned_and_tampered_artifacts(thaw, tmp_path: Path) -> None:
    out = thaw.ok("keys", "generate", str(tmp_path / "keys"))
    private, public = tmp_path / "keys" / "thaw-signing.key", tmp_path / "keys" / "thaw-signing.pub"
    key_id = thaw.ok("keys", "show", str(public)).strip()
    assert f"key {key_id}" in out and thaw.ok("keys", "show", str(private)).strip() == key_id
    thaw.fails("keys", "generate", str(tmp_path / "keys"), message="already exists")

    publish(thaw.home, "plain")
    publish(thaw.home, "signed", signer=Signer.load(private))
    trusting = {"THAW_TRUSTED_KEYS": str(public)}
    assert f"signature: signed by trusted key {key_id}" in thaw.ok("verify", "signed", **trusting)
    thaw.fails("verify", "plain", message="'plain' is not signed", **trusting)
    thaw.fails("restore", "plain", message="'plain' is not signed", **trusting)

    data = json.loads(manifest_path(thaw, "signed").read_text())
    data["worker"]["canary"] = {"x": 2}
    manifest_path(thaw, "signed").write_text(json.dumps(data))
    thaw.fails("verify", "signed", message="signature by key", **trusting)
    thaw.fails("inspect", "signed", message="trusted_keys: cannot read", THAW_TRUSTED_KEYS=str(tmp_path / "no.pub"))
