"""GPU end-to-end tests: real CUDA workers, the real driver checkpoint API, real CRIU.

Skipped (not failed) where there is no NVIDIA GPU or no root/CRIU; scripts/gpu-suite.sh runs
them on the GPU machine. Workers' state lives under /dev/shm when it exists (tmpfs): the
images are GiBs, and the test measures thaw, not the disk.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from thaw import pipeline
from thaw.config import Settings
from thaw.errors import ThawError

WORKER = Path(__file__).parent / "workers" / "graph_worker.py"


@pytest.fixture
def settings() -> Settings:
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    home = root / f"thaw-gpu-{uuid.uuid4().hex[:8]}"
    s = Settings(home=home)
    yield s
    for inst in pipeline.list_instances(s):
        try:
            pipeline.stop(s, inst)
        except ThawError:
            pass
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def disk_settings() -> Settings:
    """Settings with the home on disk, not under /dev/shm: sandboxes then get a /dev/shm of their own, which
    concurrent restores of workers with multiprocessing "spawn" semaphores need (sandbox/layout.py)."""
    home = Path(tempfile.mkdtemp(prefix="thaw-gpu-", dir="/var/tmp"))
    s = Settings(home=home)
    yield s
    for inst in pipeline.list_instances(s):
        try:
            pipeline.stop(s, inst)
        except ThawError:
            pass
    shutil.rmtree(home, ignore_errors=True)


def start_worker(settings: Settings, name: str = "gw", **env: str) -> pipeline.Instance:
    full = dict(os.environ)
    full.update({f"WORKER_{k.upper()}": str(v) for k, v in env.items()})
    inst = pipeline.launch(settings, [sys.executable, str(WORKER)], name=name, env=full)
    pipeline.wait_ready(settings, inst, timeout=300)
    return inst


def get(inst: pipeline.Instance, path: str, *, method: str = "GET", deadline_s: float = 60.0) -> dict:
    """JSON from a worker's HTTP server on its unix socket, waiting for the socket to appear."""
    sock = inst.dir / "http.sock"
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=deadline_s) as c:
                r = c.request(method, f"http://worker{path}")
                r.raise_for_status()
                return r.json()
        except (httpx.TransportError, FileNotFoundError):
            if time.monotonic() > deadline or not inst.alive():
                raise AssertionError(f"worker {inst.id} does not answer {path}; log:\n{inst.log_tail(40)}") from None
            time.sleep(0.02)
