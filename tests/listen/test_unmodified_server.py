"""Issue 16's proof on a server thaw does not own: a plain FastAPI app (uvicorn) around a transformers Qwen3 model
(random weights, torch.compile warm-up, CPU), started with --park-at-listen, snapshotted, restored twice at once,
answering exactly like the original; the same with the model in a child process; an early-binding server gets the
clear message; the HTTP canary catches a perturbed copy. Real CRIU, real torch, real HTTP over TCP inside each
copy's own network namespace."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from thaw import pipeline
from thaw.config import Settings
from thaw.cuda import process
from thaw.errors import CanaryMismatch, ListenedEarly
from thaw.listen import ParkAtListen
from thaw.pipeline.http_canary import parse
from thaw.sandbox import netns
from workers import HERE, stop_everything, wait_until

pytestmark = [pytest.mark.criu, pytest.mark.slow]

SERVER = HERE / "hf_server.py"
PORT = 8000
CANARY = """
{"prompt": "Hello, world", "max_tokens": 16}
{"prompt": "The capital of France is", "max_tokens": 16}
{"messages": [{"role": "user", "content": "Say something"}], "max_tokens": 16}
{"method": "GET", "path": "/health", "compare": ["ok", "compiled_graphs", "warmup_s"]}
"""
# asked of every copy besides the canary: prompts the canary never saw
PROBES = ["def fib(n):", "Snapshots restore in seconds", "x" * 50]


class Home:
    """A thaw home of the module's own; servers share one inductor cache (compiled kernels are mapped by path)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="thaw-listen-", dir="/tmp"))
        self.settings = Settings(home=self.root / "home", store=str(self.root / "home" / "artifacts"))
        self.bias = self.root / "bias"  # while it exists, every server of this home answers differently
        self.env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(self.root / "inductor")}

    def launch(self, name: str, *args: str, park: ParkAtListen | None = None) -> pipeline.Instance:
        argv = [sys.executable, str(SERVER), "--port", str(PORT), "--bias-file", str(self.bias), *args]
        return pipeline.launch(self.settings, argv, name=name, env=self.env, cwd=self.root,
                               park=park or ParkAtListen())


@pytest.fixture(scope="module")
def home() -> Iterator[Home]:
    h = Home()
    yield h
    stop_everything(h.settings.home)
    shutil.rmtree(h.root, ignore_errors=True)


def ask(inst: pipeline.Instance, prompt: str, wait_s: float = 60) -> dict[str, Any]:
    """A completion from the server inside ``inst``'s sandbox, over TCP in its own network namespace."""

    def call() -> dict[str, Any]:
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", trust_env=False, timeout=60) as client:
            def answer() -> httpx.Response | None:
                try:
                    return client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 16})
                except httpx.TransportError:  # not listening yet, or listening but still warming up
                    return None

            response = wait_until(answer, wait_s, f"{inst.name} to serve on port {PORT}", interval=0.05)
            response.raise_for_status()
            return response.json()

    return netns.run_in(inst.host_pid, call)


def texts(inst: pipeline.Instance) -> list[str]:
    return [ask(inst, prompt)["choices"][0]["text"] for prompt in PROBES]


@pytest.fixture(scope="module")
def single(home: Home) -> tuple[pipeline.Instance, pipeline.SnapshotResult]:
    """The single-process server, parked at its listen, snapshotted with --leave-running and the HTTP canary."""
    original = home.launch("single")
    marker = pipeline.wait_ready(home.settings, original, timeout=900)
    assert marker.serves == f"tcp://0.0.0.0:{PORT}"
    snap = pipeline.snapshot(home.settings, original.id, "single", leave_running=True, canary_http=parse(CANARY))
    return original, snap


def test_a_parked_fastapi_server_restores_twice_at_once_and_answers_like_the_original(home: Home, single) -> None:
    original, snap = single
    canary = snap.manifest.worker.http_canary
    assert canary is not None and canary.serves == f"tcp://0.0.0.0:{PORT}" and len(canary.exchanges) == 4
    assert canary.exchanges[3].answer["compiled_graphs"] >= 1, "the server compiled its model before it listened"
    assert snap.manifest.gpus == [] and snap.manifest.gpu_pids == []
    want = texts(original)  # the original goes on serving (--leave-running)

    with ThreadPoolExecutor(2) as pool:
        copies = list(pool.map(lambda i: pipeline.restore(home.settings, "single", name=f"copy{i}"), (1, 2)))
    assert len({c.instance.host_pid for c in copies}) == 2
    for copy in copies:
        assert copy.canary_checked and len(copy.http_canary_got) == 4
        assert copy.http_canary_got[0]["answer"] == canary.exchanges[0].answer
        assert copy.instance.state == "running"
        assert texts(copy.instance) == want, "a restored copy answers exactly like the original"


def test_the_http_canary_catches_a_perturbed_copy_and_kills_it(home: Home, single) -> None:
    home.bias.write_text("100")  # restored copies now favour one token: their answers differ
    try:
        with pytest.raises(CanaryMismatch) as failed:
            pipeline.restore(home.settings, "single", name="perturbed")
    finally:
        home.bias.unlink()
    assert "answers its HTTP canary differently: request 1 (POST /v1/completions)" in str(failed.value)
    [copy] = [i for i in pipeline.list_instances(home.settings) if i.name == "perturbed"]
    assert copy.state == "failed" and not copy.alive(), "the copy that failed its canary is killed"


def test_a_server_whose_model_lives_in_a_child_process_restores_with_its_child(home: Home, single) -> None:
    original_single, _ = single
    original = home.launch("multi", "--engine-process")
    pipeline.wait_ready(home.settings, original, timeout=900)
    children = process.descendants(original.host_pid)[1:]
    assert any("spawn_main" in process.command_line(pid) for pid in children), "the engine runs in a child"
    snap = pipeline.snapshot(home.settings, original.id, "multi", canary_http=parse(CANARY))
    assert not original.alive(), "without --leave-running the original is stopped once the canary is recorded"
    assert snap.manifest.worker.http_canary is not None

    with ThreadPoolExecutor(2) as pool:
        copies = list(pool.map(lambda i: pipeline.restore(home.settings, "multi", name=f"multi{i}"), (1, 2)))
    want = texts(original_single)  # same config and seed: the in-process server's answers
    for copy in copies:
        tree = process.descendants(copy.instance.host_pid)
        assert any("spawn_main" in process.command_line(pid) for pid in tree), "the engine child was restored"
        assert len(copy.http_canary_got) == 4
        assert texts(copy.instance) == want


def test_a_server_that_listens_before_warming_up_gets_a_clear_message(home: Home) -> None:
    early = home.launch("early", "--bind-early", park=ParkAtListen(min_warmup_s=10))
    with pytest.raises(ListenedEarly) as refused:
        pipeline.wait_ready(home.settings, early, timeout=300)
    message = str(refused.value)
    assert f"opened its listening socket (tcp://0.0.0.0:{PORT})" in message
    assert "minimum warm-up is 10 s" in message and "will not snapshot it cold" in message
    assert "lifespan" in message  # the fix
    # it was not parked: it serves as it would without thaw, once its (late) warm-up is done
    assert ask(early, "still serves", wait_s=900)["choices"]
