"""Restored memory is bit-identical with stock CRIU and with fast CRIU (parallel page fill).

A worker fills ~1 GiB of private anonymous memory with random bytes and reports a
checksum computed from its own memory; after snapshot and restore the copy computes it
again. With fast CRIU (scripts/install-criu-fast.sh; found at THAW_CRIU_FAST or
/opt/thaw/criu-fast, skipped where it is not installed) the restore must also have
taken the parallel fill, and must not have changed the VMAs' flags nor made resident
memory the worker never had.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from thaw import pipeline
from thaw.config import Settings
from thaw.criu import find_criu
from thaw.criu.locate import FAST_TREE
from thaw.errors import HostError
from thaw.store import Store
from workers import HERE, wait_until

pytestmark = [pytest.mark.criu, pytest.mark.slow]

RANDOM_MB = 1024
FILL_LINE = re.compile(r"page fill: (\d+) bytes in (\d+) reads by (\d+) threads")


def criu_for(build: str) -> str | None:
    """The THAW_CRIU setting that picks ``build`` (None: thaw's default, which must be stock CRIU)."""
    if build == "stock":
        if find_criu().parallel_fill:
            pytest.skip("the default CRIU here is fast CRIU: no stock build to compare with")
        return None
    tree = os.environ.get("THAW_CRIU_FAST", str(FAST_TREE))
    try:
        criu = find_criu(tree)
    except HostError:
        pytest.skip(f"fast CRIU is not installed in {tree} (scripts/install-criu-fast.sh)")
    if not criu.parallel_fill:
        pytest.skip(f"{tree} is a CRIU without the page-fill patch")
    return tree


def read_report(path: Path, timeout: float) -> dict:
    wait_until(path.exists, timeout, f"the worker's memory report {path.name}", interval=0.1)
    return json.loads(path.read_text())


@pytest.mark.parametrize("build", ["stock", "fast"])
def test_restored_memory_is_bit_identical(build: str, settings: Settings, store: Store, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"criu": criu_for(build)})
    report = tmp_path / "memory.json"
    worker = pipeline.launch(settings, [sys.executable, str(HERE / "memory.py")], name="m", cwd=tmp_path,
                             env={**os.environ, "TEST_RANDOM_MB": str(RANDOM_MB), "TEST_REPORT": str(report)})
    pipeline.wait_ready(settings, worker, timeout=120)
    before = read_report(report, 10)

    pipeline.snapshot(settings, "m", "mem", store=store)
    restored = pipeline.restore(settings, "mem", store=store, name="m2")
    after = read_report(report.with_name(report.name + ".thawed"), 120)

    assert after["digest"] == before["digest"]  # every byte, as computed by the worker itself
    assert after["pid"] == before["pid"] == 1
    assert after["vmflags"] == before["vmflags"]  # no huge-page advice (or anything else) left behind
    assert after["partial_rss_kb"] == before["partial_rss_kb"]  # no memory the worker never had
    log = (restored.instance.dir / "ops" / "restore" / "restore.log").read_text()
    fills = [tuple(map(int, m.groups())) for m in FILL_LINE.finditer(log)]
    if build == "stock":
        assert fills == []
    else:  # the worker's memory went through the parallel fill, with more than one thread
        assert sum(b for b, _, _ in fills) >= RANDOM_MB << 20
        assert max(threads for _, _, threads in fills) > 1 or (os.cpu_count() or 1) == 1
