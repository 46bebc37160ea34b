"""Issue 16's proof on the GPU: an unmodified FastAPI server around a transformers Qwen3-architecture model with CUDA
graphs (static KV cache, generate() torch.compiles its decode step with mode="reduce-overhead"), run with
--park-at-listen, snapshotted with the HTTP canary, restored twice at once, answering exactly like the original;
and the same with the model in a spawned child process (the shape of vLLM and SGLang).

Run on the GPU machine: ``GPU_TESTS="tests/gpu/test_unmodified_server_gpu.py" scripts/gpu-suite.sh tests``
(needs fastapi, starlette and uvicorn: carry their wheels in .whl/).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from thaw import pipeline
from thaw.listen import ParkAtListen
from thaw.pipeline.http_canary import parse
from thaw.sandbox import netns

pytestmark = [pytest.mark.gpu, pytest.mark.criu]

SERVER = os.path.join(os.path.dirname(__file__), "..", "workers", "hf_server.py")
PORT = 8000
ARGS = ["--device", "cuda", "--size", "small", "--generate", "hf-static", "--compile-mode", "reduce-overhead"]
CANARY = """
{"prompt": "Hello, world", "max_tokens": 16}
{"prompt": "The capital of France is", "max_tokens": 16}
{"messages": [{"role": "user", "content": "Say something"}], "max_tokens": 16}
"""
PROBES = ["def fib(n):", "Snapshots restore in seconds", "GPU"]


def launch(settings, name: str, *args: str, **env: str) -> pipeline.Instance:
    argv = [sys.executable, os.path.abspath(SERVER), "--port", str(PORT), *ARGS, *args]
    inst = pipeline.launch(settings, argv, name=name, env={**os.environ, **env}, park=ParkAtListen())
    marker = pipeline.wait_ready(settings, inst, timeout=900)
    assert marker.serves == f"tcp://0.0.0.0:{PORT}"
    return inst


def call(inst: pipeline.Instance, method: str, path: str, body: Any = None) -> Any:
    def run() -> Any:
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", trust_env=False, timeout=120) as client:
            response = client.request(method, path, json=body)
            response.raise_for_status()
            return response.json()

    return netns.run_in(inst.host_pid, run)


def texts(inst: pipeline.Instance) -> list[list[int]]:
    return [call(inst, "POST", "/v1/completions", {"prompt": p, "max_tokens": 16})["choices"][0]["token_ids"]
            for p in PROBES]


def test_a_parked_hf_server_with_cuda_graphs_restores_twice_at_once_and_answers_like_the_original(disk_settings) -> None:
    settings = disk_settings
    original = launch(settings, "hf")
    snap = pipeline.snapshot(settings, original.id, "hf", leave_running=True, canary_http=parse(CANARY))
    assert snap.manifest.gpus and snap.manifest.gpu_pids == [1]
    health = call(original, "GET", "/health")
    assert health["compiled_graphs"] >= 1 and health["device"].startswith("cuda"), health
    want = texts(original)

    with ThreadPoolExecutor(2) as pool:
        copies = list(pool.map(lambda i: pipeline.restore(settings, "hf", name=f"hf{i}"), (1, 2)))
    for copy in copies:
        assert len(copy.http_canary_got) == 3
        assert texts(copy.instance) == want, "a restored copy answers exactly like the original"
    print("restore timings:", [c.timings for c in copies])


def test_a_server_whose_model_lives_in_a_gpu_child_restores_with_it(disk_settings) -> None:
    settings = disk_settings
    # the child compiles; thaw cannot shut its pool down from the parked parent: the documented fix
    original = launch(settings, "hf-mp", "--engine-process", TORCHINDUCTOR_COMPILE_THREADS="1")
    snap = pipeline.snapshot(settings, original.id, "hf-mp", canary_http=parse(CANARY))
    assert snap.manifest.gpu_pids and 1 not in snap.manifest.gpu_pids, "the GPU state is the engine child's"
    copy = pipeline.restore(settings, "hf-mp", name="hf-mp1")
    assert len(copy.http_canary_got) == 3
    assert all(len(ids) == 16 for ids in texts(copy.instance))
