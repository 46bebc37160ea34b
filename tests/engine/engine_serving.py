"""Start ``python -m thaw.engine serve`` as a real process and talk to it (tests of the engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT_S = 120
#: the tiny model's matmuls are too small to share: with several OpenMP threads on a busy CI machine
#: every op waits at a barrier for a descheduled thread (seen: a 10 ms canary taking 1-2 s)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
LISTENING = "thaw-engine listening "


class Server:
    def __init__(self, proc: subprocess.Popen[str], listen: dict[str, str], lines: list[str]) -> None:
        self.proc = proc
        self.listen = listen
        self.lines = lines
        self.http = httpx.Client(base_url=f"http://{listen['tcp']}", timeout=30)

    def complete(self, **body: Any) -> dict[str, Any]:
        r = self.http.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def stream(self, **body: Any) -> list[dict[str, Any]]:
        events = []
        with self.http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
        assert events[-1] == "[DONE]"
        return [json.loads(e) for e in events[:-1]]


def start_server(weights: Path, *extra: str) -> Server:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD}
    env.pop("THAW_RUN_DIR", None)  # not under thaw
    proc = subprocess.Popen(
        [sys.executable, "-m", "thaw.engine", "serve", "--weights", str(weights), "--device", "cpu", "--port", "0",
         "--log-level", "warning", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines: list[str] = []
    found: dict[str, Any] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(LISTENING):
                found.update(json.loads(line[len(LISTENING):]))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not found:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the engine did not start listening:\n" + "".join(lines))
        time.sleep(0.02)
    return Server(proc, found, lines)
