"""The tiny engine snapshotted at its quiesce point and restored with real CRIU, through thaw's CLI.

``thaw run`` → ``thaw snapshot --leave-running`` → ``thaw restore``: the restored copy —
and the original, released — answer on their control sockets with exactly the canary
tokens recorded at quiesce time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("thaw.pipeline", reason="needs thaw's snapshot pipeline")

pytestmark = [pytest.mark.criu, pytest.mark.slow]

TIMEOUT_S = 180


def thaw_cli(home: Path, command: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "thaw.cli.main", command, "--json", *args], capture_output=True,
                          text=True, timeout=TIMEOUT_S, env={**os.environ, "THAW_HOME": str(home)})
    assert proc.returncode == 0, f"thaw {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


@contextmanager
def serving(control_dir: Path) -> Iterator[httpx.Client]:
    """A client for the engine on ``<control_dir>/http.sock``, once it answers."""
    sock = control_dir / "http.sock"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://engine", timeout=60) as http:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                if http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"nothing answered on {sock}:\n" + \
                (control_dir / "worker.log").read_text()[-3000:]
            time.sleep(0.05)
        yield http


def answers(http: httpx.Client, canary: dict[str, Any]) -> list[list[int]]:
    out = []
    for prompt in canary["prompts"]:
        r = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": canary["max_tokens"], "temperature": 0,
                                               "ignore_eos": True, "return_token_ids": True})
        assert r.status_code == 200, r.text
        out.append(r.json()["choices"][0]["token_ids"])
    return out


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "thaw"
    yield home
    from thaw import pipeline
    from thaw.config import Settings
    from thaw.errors import ThawError

    settings = Settings(home=home)
    for inst in pipeline.list_instances(settings):
        try:
            pipeline.stop(settings, inst)
        except ThawError:
            pass


def test_a_restored_engine_answers_with_exactly_its_canary_tokens(home: Path, tiny_weights: Path) -> None:
    original = thaw_cli(home, "run", "--name", "llm", "--wait", "--",
                        sys.executable, "-m", "thaw.engine", "serve", "--weights", str(tiny_weights),
                        "--device", "cpu", "--port", "0")
    original_dir = Path(original["dir"])
    canary = json.loads((original_dir / "ready.json").read_text())["canary"]
    assert len(canary["tokens"]) == len(canary["prompts"]) > 0

    thaw_cli(home, "snapshot", "llm", "--artifact", "llm-v1", "--leave-running")
    restored = thaw_cli(home, "restore", "llm-v1", "--name", "llm-copy")
    assert restored["canary"] == "passed"
    copy_dir = Path(restored["instance"]["dir"])
    assert copy_dir != original_dir

    with serving(copy_dir) as http:
        health = http.get("/health").json()
        assert health["restored"] is True and health["canary"] == canary
        assert answers(http, canary) == canary["tokens"]
        # the restored copy reports the original's cold start: what the restore saved
        assert health["startup"]["total"] > 0
    with serving(original_dir) as http:
        assert http.get("/health").json()["restored"] is False
        assert answers(http, canary) == canary["tokens"]
    assert os.path.exists(copy_dir / "engine-startup.json")
