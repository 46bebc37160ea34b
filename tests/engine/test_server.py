"""``python -m thaw.engine serve`` on the CPU: a real process, real uvicorn, real TCP and unix sockets."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_serving import Server, start_server

from thaw.engine import canary


@pytest.fixture(scope="module")
def server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    sock = tmp_path_factory.mktemp("uds") / "http.sock"
    s = start_server(tiny_weights, "--uds", str(sock), "--max-batch", "4", "--graph-batch-sizes", "1,2,4",
                     "--canary-prompts", "3", "--canary-tokens", "6")
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait(10)


def test_health_reports_the_cold_start_breakdown_and_the_canary(server: Server) -> None:
    health = server.http.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["restored"] is False
    startup = health["startup"]
    assert list(startup["phases"]) == ["interpreter", "imports", "weights", "kv", "warmup", "canary"]
    assert all(v >= 0 for v in startup["phases"].values())
    assert startup["total"] == pytest.approx(sum(startup["phases"].values()) + startup["unaccounted"], abs=1e-3)
    assert startup["details"]["weights"]["bytes"] > 0 and startup["details"]["kv"]["blocks"] > 1
    assert health["canary"]["prompts"] == list(canary.PROMPTS)  # as asked: 3 prompts, 6 tokens each
    assert [len(t) for t in health["canary"]["tokens"]] == [6, 6, 6]
    summary = [line for line in server.lines if line.startswith("thaw-engine cold start")]
    assert len(summary) == 1 and all(f"{p} " in summary[0] for p in startup["phases"])


def test_greedy_completions_reproduce_the_canary(server: Server) -> None:
    recorded = server.http.get("/health").json()["canary"]
    for prompt, tokens in zip(recorded["prompts"], recorded["tokens"]):
        body = server.complete(prompt=prompt, max_tokens=recorded["max_tokens"], temperature=0, ignore_eos=True,
                               return_token_ids=True)
        choice = body["choices"][0]
        assert choice["token_ids"] == tokens
        assert choice["finish_reason"] == "length"
        assert body["object"] == "text_completion"
        assert body["usage"] == {"prompt_tokens": len(prompt.encode()), "completion_tokens": len(tokens),
                                 "total_tokens": len(prompt.encode()) + len(tokens)}


def test_streaming_sends_the_same_tokens_one_event_each(server: Server) -> None:
    body = dict(prompt="stream me", max_tokens=12, temperature=0, ignore_eos=True, return_token_ids=True)
    whole = server.complete(**body)["choices"][0]
    events = server.stream(**body)
    assert [e["choices"][0]["token_ids"][0] for e in events] == whole["token_ids"]
    assert "".join(e["choices"][0]["text"] for e in events) == whole["text"]
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * 11 + ["length"]
    assert len({e["id"] for e in events}) == 1


def test_concurrent_http_requests_get_the_tokens_they_would_get_alone(server: Server) -> None:
    prompts = [f"request number {i}" for i in range(6)]

    def ask(p: str) -> list[int]:
        return server.complete(prompt=p, max_tokens=10 + len(p) % 5, temperature=0, ignore_eos=True,
                               return_token_ids=True)["choices"][0]["token_ids"]

    alone = [ask(p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone
    metrics = server.http.get("/metrics").text
    batched = [line for line in metrics.splitlines()
               if line.startswith('thaw_engine_decode_step_seconds_count{batch="') and not line.endswith(" 0.0")]
    assert any('batch="1"' not in line for line in batched)  # some steps decoded several requests at once


def test_the_unix_socket_serves_the_same_api(server: Server) -> None:
    uds = server.listen["uds"]
    with httpx.Client(transport=httpx.HTTPTransport(uds=uds), base_url="http://engine", timeout=30) as http:
        assert http.get("/health").json()["status"] == "ok"
        r = http.post("/v1/completions", json={"prompt": "over a unix socket", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


def test_metrics_count_requests_and_tokens(server: Server) -> None:
    def value(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
                   or line.startswith(name + "{"))

    before = server.http.get("/metrics").text
    server.complete(prompt="count me", max_tokens=5, temperature=0, ignore_eos=True)
    after = server.http.get("/metrics").text
    tokens = "thaw_engine_generation_tokens_total"
    assert value(after, tokens) - value(before, tokens) == 5
    assert value(after, 'thaw_engine_requests_total{finish_reason="length"}') == \
        value(before, 'thaw_engine_requests_total{finish_reason="length"}') + 1
    assert 'thaw_engine_startup_seconds{phase="weights"}' in after


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "max_tokens": 5000}, "max_tokens"),
    ({"prompt": [300, 1]}, "prompt"),
    ({"max_tokens": 3}, "prompt"),
])
def test_bad_requests_get_an_openai_style_400(server: Server, body: dict[str, Any], param: str) -> None:
    r = server.http.post("/v1/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


def test_a_client_that_disconnects_mid_stream_frees_its_kv_blocks(server: Server) -> None:
    free = server.http.get("/health").json()["kv"]["free"]
    with server.http.stream("POST", "/v1/completions",
                            json={"prompt": "long", "max_tokens": 900, "ignore_eos": True, "stream": True}) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 20
    while server.http.get("/health").json()["kv"]["free"] != free:
        assert time.monotonic() < deadline, "the aborted request's blocks were not freed"
        time.sleep(0.05)
    assert server.http.get("/health").json()["running"] == 0


def test_sigterm_stops_the_server_cleanly(tiny_weights: Path) -> None:
    s = start_server(tiny_weights)
    assert s.complete(prompt="hi", max_tokens=2)["choices"]
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(20) == 0


def test_a_missing_checkpoint_fails_with_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "thaw.engine", "serve", "--weights", str(tmp_path / "nope"),
                           "--device", "cpu"], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "config.json does not exist" in proc.stderr and "make-weights" in proc.stderr
    assert "Traceback" not in proc.stderr
