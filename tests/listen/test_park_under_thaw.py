"""A server that knows nothing of thaw, parked at its listen under real thaw and real CRIU (no torch: fast):
the failure path of the HTTP canary, where the original was let go before its answers could be recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from park_servers import BINDER

from thaw import pipeline
from thaw.config import Settings
from thaw.errors import CheckpointError
from thaw.listen import ParkAtListen
from thaw.pipeline.http_canary import parse
from thaw.sandbox import netns
from workers import stop_everything, wait_until

pytestmark = pytest.mark.criu


def test_a_canary_the_original_cannot_answer_publishes_nothing_and_leaves_it_serving(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", store=str(tmp_path / "home" / "artifacts"))
    plan = {"events": str(tmp_path / "events"), "binds": [["tcp", "0.0.0.0", 8000]]}  # it answers "ok", not HTTP
    try:
        inst = pipeline.launch(settings, [sys.executable, str(BINDER), json.dumps(plan)], name="raw", cwd=tmp_path,
                               park=ParkAtListen(min_warmup_s=0, expect_gpu="no"))
        assert pipeline.wait_ready(settings, inst, timeout=60).serves == "tcp://0.0.0.0:8000"
        with pytest.raises(CheckpointError) as failed:
            pipeline.snapshot(settings, inst.id, "raw", canary_http=parse('{"method": "GET", "path": "/"}'))
        assert "released to answer the HTTP canary and serves on" in str(failed.value)
        assert pipeline.find(settings, inst.id).alive()
        from thaw.store import open_store

        assert open_store(settings.store_url).list() == [], "nothing was published"

        def hello() -> bytes:
            import socket

            with socket.create_connection(("127.0.0.1", 8000), timeout=5) as s:
                return s.recv(100)

        assert wait_until(lambda: netns.run_in(inst.host_pid, hello), 10, "the original to serve").startswith(b"ok")
    finally:
        stop_everything(settings.home)
