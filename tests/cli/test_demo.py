"""``thaw demo``, the README's first command, end to end (real torch.compile, real CRIU)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from thaw.demo import run_demo

pytestmark = [pytest.mark.criu, pytest.mark.slow]


def test_the_demo_restores_copies_that_answer_like_the_original(monkeypatch) -> None:
    monkeypatch.setenv("DEMO_DOCS", "512")  # a smaller index: the compile is what the demo is about
    # a short home: unix socket paths (the workers' <control dir>/http.sock) are limited to 107 bytes
    home = Path(tempfile.mkdtemp(prefix="thaw-demo-", dir="/tmp"))
    try:
        figures = run_demo(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    assert figures["identical"] is True
    assert len(figures["restore_s"]) == 3  # one copy alone, then two at once
    assert figures["artifact_bytes"] > 0
