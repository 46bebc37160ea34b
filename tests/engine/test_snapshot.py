"""The engine snapshotted at its quiesce point and restored with real CRIU, through thaw's CLI.

On the CPU with the tiny config; on a GPU (marked ``gpu``) also with qwen3-0.6b, its
KV cache released from the snapshot by thaw.memory.

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
from engine_serving import ONE_THREAD

pytest.importorskip("thaw.pipeline", reason="needs thaw's snapshot pipeline")

pytestmark = [pytest.mark.criu, pytest.mark.slow]

TIMEOUT_S = 180


def thaw_cli(home: Path, command: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "thaw.cli.main", command, "--json", *args], check=False, capture_output=True,
                          text=True, timeout=TIMEOUT_S, env={**os.environ, "THAW_HOME": str(home), **ONE_THREAD})
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


@pytest.fixture(scope="module")
def checkpoints(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints by config name, written on first use."""
    return {"tiny": tiny_weights}


def weights_of(config: str, checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    if config not in checkpoints:
        from thaw.engine.config import get_config
        from thaw.engine.weights import make_weights

        checkpoints[config] = make_weights(get_config(config), tmp_path_factory.mktemp("w") / config).path
    return checkpoints[config]


@pytest.mark.parametrize(("config", "device"), [
    pytest.param("tiny", "cpu", id="tiny-cpu"),
    pytest.param("tiny", "cuda", id="tiny-gpu", marks=pytest.mark.gpu),
    pytest.param("qwen3-0.6b", "cuda", id="qwen3-0.6b-gpu", marks=pytest.mark.gpu),
])
def test_a_restored_engine_answers_with_exactly_its_canary_tokens(
        config: str, device: str, home: Path, checkpoints: dict[str, Path],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    weights = weights_of(config, checkpoints, tmp_path_factory)
    extra = ["--kv-gb", "2"] if device == "cuda" else []
    original = thaw_cli(home, "run", "--name", "llm", "--wait", "--",
                        sys.executable, "-m", "thaw.engine", "serve", "--weights", str(weights),
                        "--device", device, "--port", "0", *extra)
    original_dir = Path(original["control_dir"])
    canary = json.loads((original_dir / "ready.json").read_text())["canary"]
    assert len(canary["tokens"]) == len(canary["prompts"]) > 0

    thaw_cli(home, "snapshot", "llm", "--artifact", "llm-v1", "--leave-running")
    if device == "cuda":
        # the KV cache left the snapshot: thaw.memory released at least what the engine allocated
        manifest = thaw_cli(home, "inspect", "llm-v1")
        kv_bytes = manifest["worker"]["freeze_report"]["thaw.engine"]["kv_bytes"]
        released = sum(m["bytes"] for m in manifest["memory_released"] if m["tag"] == "kv")
        assert released >= kv_bytes >= 2 * 1024**3 * 0.99
    restored = thaw_cli(home, "restore", "llm-v1", "--name", "llm-copy")
    assert restored["canary"]["match"] is True
    copy_dir = Path(restored["worker"]["control_dir"])
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
