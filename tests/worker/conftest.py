"""A parked worker (tests/workers/park.py) in a real control directory, driven the way thaw drives it.

The SDK finds its control directory through ``$THAW_RUN_DIR/ns/<pid-namespace inode>``.
The worker here runs in the test's own pid namespace, so the test creates that link
itself, pointing at a directory of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from thaw.worker import protocol
from workers import PARK, wait_until


class ParkedWorker:
    def __init__(self, tmp: Path, env: dict[str, str] | None = None, leftover: protocol.Command | None = None) -> None:
        self.run_dir = tmp / "run"
        self.dir = tmp / "control"
        self.dir.mkdir(parents=True)
        if leftover is not None:  # a command written in an earlier life of this control directory
            protocol.write_json_atomic(self.dir / protocol.COMMAND, protocol.encode(leftover))
        self.events_file = tmp / "events.jsonl"
        self.link(self.dir)
        self.proc = subprocess.Popen(
            [sys.executable, str(PARK)],
            env={**os.environ, protocol.ENV_RUN_DIR: str(self.run_dir), "PARK_EVENTS": str(self.events_file),
                 **(env or {})},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

    def link(self, control_dir: Path) -> None:
        """Point this pid namespace's link at ``control_dir`` (what thaw does for each sandbox)."""
        link = protocol.ns_link(self.run_dir, protocol.sandbox_key())
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(link.name + ".tmp")
        os.symlink(control_dir, tmp)
        os.rename(tmp, link)

    def ready(self, timeout: float = 10.0) -> protocol.ReadyMarker:
        def marker() -> dict[str, Any] | None:
            raw = protocol.read_json(self.dir / protocol.READY)
            assert raw or self.proc.poll() is None, f"worker exited before parking: {self.output()}"
            return raw

        return protocol.decode_ready(wait_until(marker, timeout, "the ready marker"))

    def send(self, action: protocol.Action, info: dict[str, Any] | None = None, verify: bool = False,
             timeout: float = 10.0, control_dir: Path | None = None) -> protocol.Reply:
        where = control_dir or self.dir
        cmd = protocol.Command(id=uuid.uuid4().hex, action=action, info=info or {}, verify=verify)
        protocol.write_json_atomic(where / protocol.COMMAND, protocol.encode(cmd))

        def reply() -> dict[str, Any] | None:
            raw = protocol.read_json(where / protocol.REPLY)
            if raw and raw["id"] == cmd.id:
                return raw
            assert self.proc.poll() is None, f"worker exited instead of answering: {self.output()}"
            return None

        return protocol.decode_reply(wait_until(reply, timeout, f"the reply to {action.value}"))

    def exit_code(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines()]

    def hooks_run(self) -> list[tuple[str, str]]:
        return [(e["hook"], e["reason"]) for e in self.events() if "hook" in e]

    def outcome(self) -> dict[str, Any]:
        self.exit_code()
        [outcome] = [e for e in self.events() if "outcome" in e]
        return outcome

    def poll_output(self, text: str) -> str:
        """What the worker printed so far if it contains ``text`` (read without waiting), else ""."""
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        chunk = self.proc.stdout.read()
        self._printed = getattr(self, "_printed", "") + (chunk.decode(errors="replace") if chunk else "")
        assert text in self._printed or self.proc.poll() is None, f"worker exited: {self._printed}"
        return self._printed if text in self._printed else ""

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


@pytest.fixture
def start_parked(tmp_path: Path) -> Iterator:
    """``start_parked(leftover=None, **env)``: a park.py worker, parked at its quiesce point; killed after the test."""
    started: list[ParkedWorker] = []

    def start(leftover: protocol.Command | None = None, **env: str) -> ParkedWorker:
        worker = ParkedWorker(tmp_path / f"w{len(started)}", env, leftover)
        started.append(worker)
        worker.ready()
        return worker

    yield start
    for worker in started:
        worker.close()
