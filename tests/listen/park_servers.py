"""Helpers for the park-at-listen tests (a module of its own: conftest modules are not importable by name).

A server that knows nothing of thaw (binder.py) started the way ``thaw run --park-at-listen`` starts one, but in
the test's own namespaces: thaw's start-up directory first on PYTHONPATH, the spec in the environment, and a
control directory linked for this namespace, which the test drives as thaw would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from thaw.listen import launch
from thaw.listen.spec import ParkAtListen
from thaw.worker import protocol
from workers import wait_until

BINDER = Path(__file__).parent / "binder.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> str:
    """What the server on 127.0.0.1:``port`` says, or "" if nothing listens there."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).decode()
    except OSError:
        return ""


class Server:
    def __init__(self, tmp: Path, plan: dict[str, Any], spec: ParkAtListen, env: dict[str, str]) -> None:
        self.run_dir = tmp / "run"
        self.dir = tmp / "control"
        self.dir.mkdir(parents=True)
        self.events_file = tmp / "events.jsonl"
        protocol.link_sandbox(self.run_dir, protocol.sandbox_key(), self.dir)
        base = {k: v for k, v in os.environ.items() if not k.startswith("THAW_PARK")}
        base.update(env)
        full = {**base, **launch.worker_env(spec, self.run_dir, base), protocol.ENV_RUN_DIR: str(self.run_dir)}
        self.proc = subprocess.Popen([sys.executable, str(BINDER), json.dumps({**plan, "events": str(self.events_file)})],
                                     env=full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines()]

    def ready(self, timeout: float = 20.0) -> protocol.ReadyMarker:
        def marker() -> dict[str, Any] | None:
            assert self.proc.poll() is None, f"the server exited: {self.output()}"
            return protocol.read_json(self.dir / protocol.READY)

        return protocol.decode_ready(wait_until(marker, timeout, "the server to park"))

    def send(self, action: protocol.Action, timeout: float = 10.0) -> protocol.Reply:
        cmd = protocol.Command(id=uuid.uuid4().hex, action=action)
        protocol.write_json_atomic(self.dir / protocol.COMMAND, protocol.encode(cmd))

        def reply() -> dict[str, Any] | None:
            raw = protocol.read_json(self.dir / protocol.REPLY)
            return raw if raw and raw["id"] == cmd.id else None

        return protocol.decode_reply(wait_until(reply, timeout, f"the reply to {action.value}"))

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
