"""Real workers (tests/workers/serve.py) in real sandboxes, under a thaw home of the test's own."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from thaw import pipeline
from thaw.config import Settings
from thaw.pipeline import Instance
from thaw.store import Store, open_store
from workers import SERVE, stop_everything


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings with ``home`` and the artifact store under tmp_path; every sandbox of it is killed afterwards."""
    home = tmp_path / "home"
    yield Settings(home=home, store=str(home / "artifacts"))
    stop_everything(home)


@pytest.fixture
def store(settings: Settings) -> Store:
    return open_store(settings.store_url)


@pytest.fixture
def launch_worker(settings: Settings, tmp_path: Path) -> Callable[..., Instance]:
    """``launch_worker(name="w", ready=True, **env)``: serve.py in a new sandbox, parked at its quiesce point."""

    def launch(name: str = "w", ready: bool = True, **env: str) -> Instance:
        env = {**os.environ, "TEST_LOG": str(tmp_path / f"{name}.data.log"), **env}
        inst = pipeline.launch(settings, [sys.executable, str(SERVE)], name=name, env=env, cwd=tmp_path)
        if ready:
            pipeline.wait_ready(settings, inst, timeout=30)
        return inst

    return launch


@pytest.fixture
def outside_server(tmp_path: Path) -> Iterator[Path]:
    """A unix socket server outside any sandbox that accepts connections and holds them open."""
    path = tmp_path / "outside.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    yield path
    done.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()
