"""Fixtures of the park-at-listen tests: a server that knows nothing of thaw, started as ``--park-at-listen`` would."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from park_servers import Server

from thaw.listen.spec import ParkAtListen


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """``start_server(plan, spec=ParkAtListen(...), **env)``; killed (with any child) after the test."""
    started: list[Server] = []

    def start(plan: dict[str, Any], spec: ParkAtListen | None = None, **env: str) -> Server:
        server = Server(tmp_path / f"s{len(started)}", plan,
                        spec or ParkAtListen(min_warmup_s=0, expect_gpu="no"), env)
        started.append(server)
        return server

    yield start
    for server in started:
        for event in server.events():
            if event["pid"] != server.proc.pid:
                try:
                    os.kill(event["pid"], 9)
                except ProcessLookupError:
                    pass
        server.close()
