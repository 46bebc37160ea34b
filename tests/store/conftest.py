"""Fixtures for store tests: a real S3-compatible server process and artifact builders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from thaw.model.manifest import Manifest, SourceInfo, WorkerInfo
from thaw.store.testing import s3_server


@pytest.fixture(scope="session")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``s3://bucket?endpoint=...`` of a moto S3 server process shared by the session's tests."""
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with s3_server("thaw-store-tests", log=log) as url:
        yield url


@pytest.fixture
def s3_prefix_url(s3_url: str, request: pytest.FixtureRequest) -> str:
    """A URL with a prefix of this test's own, and 1 MiB chunks so small files span many chunks."""
    bucket, _, query = s3_url[len("s3://"):].partition("?")
    prefix = request.node.name.replace("[", "-").replace("]", "").lower()[:60]
    return f"s3://{bucket}/{prefix}?{query}&chunk_mib=1&workers=8"


def bare_manifest(name: str = "x") -> Manifest:
    return Manifest(artifact_id="", name=name, source=SourceInfo(host="test", kernel="test"),
                    worker=WorkerInfo(name="w"))


def fill(d: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    """Write random files of the given sizes under ``d``; return their contents."""
    out = {}
    for rel, size in sizes.items():
        data = os.urandom(size)
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
        out[rel] = data
    return out


@pytest.fixture
def publish():
    """``publish(store, name, sizes) -> (manifest, contents)``: stage random files and publish them."""

    def run(store, name: str, sizes: dict[str, int]):
        with store.stage(name) as staged:
            contents = fill(staged.dir, sizes)
            staged.published = bare_manifest(name)
        return staged.published, contents

    return run
