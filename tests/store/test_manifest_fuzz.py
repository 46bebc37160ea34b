"""Manifest fuzzing: hostile manifests (valid JSON of the wrong shape, hostile paths, huge numbers, unicode)
never crash thaw. Every rejection is a typed thaw error, whatever reads the manifest: the parser, the
stores (verify, fetch with and without copying) and the CLI (ls, inspect, verify); and nothing is ever
written outside the artifact and its staging directory.

Bounded for CI (a few hundred examples in all); HYPOTHESIS_PROFILE=nightly runs many more.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from thaw.cli.main import app
from thaw.errors import ArtifactNotFound, ConfigError, IntegrityError
from thaw.store import DirectoryStore, open_store
from thaw.store.digest import describe_file
from thaw.model.manifest import Manifest, ReleasedMemory, SourceInfo, WorkerInfo, check_path

settings.register_profile("ci", max_examples=150, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=5000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TYPED = (IntegrityError, ConfigError, ArtifactNotFound)
PAGES = bytes(range(256)) * 300  # 76800 bytes: two chunks of the smallest chunk size
CORE = b"core image"


def _base() -> dict:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "images").mkdir()
        (root / "images" / "pages-1.img").write_bytes(PAGES)
        (root / "images" / "core-1.img").write_bytes(CORE)
        files = [describe_file(root, rel, chunk_size=64 << 10) for rel in ("images/pages-1.img", "images/core-1.img")]
    m = Manifest(artifact_id="ab" * 16, name="a1", chunk_size=64 << 10, files=files,
                 source=SourceInfo(host="node", kernel="6.18"),
                 worker=WorkerInfo(name="w", argv=["python"], canary={"tokens": [1, 2]}, hooks=["kv"]),
                 sandbox={"net_key": "extRootNetNS", "stdio": ["/w.log"]}, gpus=[{"index": 0, "uuid": "GPU-5f1e0c3a-9b7d-4e21-a0b1-c2d3e4f50617", "name": "H200", "memory_total": 1 << 30}],
                 memory_released=[ReleasedMemory(tag="kv", bytes=1)], timings={"dump": 1.0})
    return json.loads(m.to_json())


BASE = _base()

HOSTILE_PATHS = ["../../etc/passwd", "/etc/passwd", "images/../../x", "images//x", "./images/x", "images/x/",
                 "manifest.json", "images/\x00x", "images/x\n", "images/\x1b[2J", "\u202eimages/gpj.exe", "..",
                 "images/" + "a" * 300, "/".join(["d"] * 40), "images/pages-1.img/inner", "images", "é/ü.img",
                 "images/\ud800"]
numbers = st.one_of(st.integers(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                    st.sampled_from([0, -1, 2 ** 63, 2 ** 64 + 1, 10 ** 300, 1.5, 1e308, -0.0]))
text = st.text(max_size=30) | st.sampled_from(HOSTILE_PATHS + ["[bold]x[/]", "[link=http://x]y[/link]", ""])
json_values = st.recursive(st.none() | st.booleans() | numbers | text,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                           max_leaves=12)
paths = st.sampled_from(HOSTILE_PATHS) | text | st.lists(st.sampled_from(["..", ".", "", "a", "images", "\x00", "é"]),
                                                          max_size=5).map("/".join)


@st.composite
def hostile_manifests(draw: st.DrawFn) -> dict:
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["top", "file", "file-path", "nested", "add", "drop"]))
        files = doc.get("files")
        if kind == "top":
            doc[draw(st.sampled_from(sorted(BASE)))] = draw(json_values)
        elif kind in ("file", "file-path") and isinstance(files, list) and files:
            entry = files[draw(st.integers(0, len(files) - 1))]
            if not isinstance(entry, dict):
                continue
            field = "path" if kind == "file-path" else draw(st.sampled_from(["size", "digest", "chunks", "extra"]))
            entry[field] = draw(paths if field == "path" else numbers if field == "size" else json_values)
        elif kind == "nested" and isinstance(doc.get("worker"), dict):
            doc["worker"][draw(st.sampled_from(["name", "argv", "canary", "pid", "hooks"]))] = draw(json_values)
        elif kind == "add":
            doc[draw(text)] = draw(json_values)
        elif kind == "drop" and doc:
            doc.pop(draw(st.sampled_from(sorted(doc))), None)
    return doc


def _accepted_is_safe(m: Manifest) -> None:
    for f in m.files:
        check_path(f.path)
        assert not f.path.startswith("/") and ".." not in f.path.split("/")
    assert len({f.path for f in m.files}) == len(m.files)
    assert Manifest.parse(m.to_json(), name=m.name).digest == m.digest, "a manifest read back keeps its digest"


@given(hostile_manifests())
def test_the_parser_accepts_only_safe_manifests_and_refuses_the_rest_with_a_typed_error(doc: dict) -> None:
    try:
        m = Manifest.parse(json.dumps(doc), name="a1")
    except TYPED:
        return
    _accepted_is_safe(m)


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
       | json_values.map(lambda v: json.dumps(v).encode()))
@settings(max_examples=100)
def test_arbitrary_bytes_are_refused_with_a_typed_error(data: bytes) -> None:
    try:
        Manifest.parse(data)
    except TYPED:
        return
    raise AssertionError("random bytes parsed as a manifest")


def _artifact(root: Path, doc: dict) -> None:
    (root / "store" / "a1" / "images").mkdir(parents=True)
    (root / "store" / "a1" / "images" / "pages-1.img").write_bytes(PAGES)
    (root / "store" / "a1" / "images" / "core-1.img").write_bytes(CORE)
    (root / "store" / "a1" / "manifest.json").write_text(json.dumps(doc))
    (root / "outside").mkdir()
    (root / "outside" / "precious").write_bytes(b"keep")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@given(hostile_manifests())
@settings(max_examples=60)
def test_stores_refuse_hostile_manifests_with_typed_errors_and_write_nothing_outside_staging(doc: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _artifact(root, doc)
        before = _tree(root / "outside")
        for store in (DirectoryStore(root / "store"), open_store(f"dir://{root / 'store'}?fetch=copy")):
            for op in (lambda s=store: s.manifest("a1"), lambda s=store: s.check_complete("a1"),
                       lambda s=store: s.verify("a1"), lambda s=store: s.fetch("a1", root / "staging").cleanup(),
                       store.list):
                try:
                    op()
                except TYPED:
                    pass
        assert _tree(root / "outside") == before
        assert sorted(p.name for p in root.iterdir()) in (["outside", "store"], ["outside", "staging", "store"])
        assert not (root / "staging").exists() or list((root / "staging").iterdir()) == []


def test_an_error_that_quotes_a_hostile_field_name_cannot_steer_the_terminal(tmp_path: Path) -> None:
    """Found by the fuzzer below: an unknown field named ESC was quoted raw in 'malformed: ...'."""
    valid = json.loads(json.dumps(BASE))
    valid["\x1b[2J"] = None
    _artifact(tmp_path, valid)
    result = CliRunner().invoke(app, ["inspect", "a1", "--store", str(tmp_path / "store"),
                                      "--home", str(tmp_path / "home")])
    assert result.exit_code == 1 and "\x1b" not in result.output


@given(hostile_manifests())
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
def test_the_cli_shows_or_refuses_hostile_manifests_without_a_traceback(doc: dict) -> None:
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _artifact(root, doc)
        for args in (["ls"], ["inspect", "a1"], ["verify", "a1"], ["inspect", "a1", "--json"]):
            result = runner.invoke(app, [*args, "--store", str(root / "store"), "--home", str(root / "home")])
            assert result.exit_code in (0, 1), (args, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
            assert "Traceback" not in result.output
            assert "\x1b" not in result.output or args == ["inspect", "a1", "--json"]


def test_a_lone_surrogate_escape_is_refused_with_a_typed_error() -> None:
    """Found by the fuzzer: json.loads turns "\\ud800" into a lone surrogate, the manifest parsed, and writing it
    back (to_json, a digest, a log line) raised UnicodeEncodeError."""
    doc = copy.deepcopy(BASE)
    doc["worker"]["name"] = "w\ud800"
    with pytest.raises(IntegrityError, match="not valid Unicode"):
        Manifest.parse(json.dumps(doc), name="a1")
