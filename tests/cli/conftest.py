"""Running the real ``thaw`` command, as a user would, under a thaw home of the test's own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers import SERVE, stop_everything, wait_until

THAW = Path(sys.executable).with_name("thaw")


class Thaw:
    """``thaw(*args)`` runs the CLI and returns the finished process; ``thaw.json(*args)`` parses --json output."""

    def __init__(self, home: Path, cwd: Path) -> None:
        self.home = home
        self.cwd = cwd
        # wide enough that rich never wraps a line: the tests read messages line by line
        # PYTHONFAULTHANDLER: a command that hangs is sent SIGABRT and shows where it was (see finish)
        self.env = {**os.environ, "THAW_HOME": str(home), "COLUMNS": "250", "PYTHONFAULTHANDLER": "1"}
        self.env.pop("THAW_STORE", None)

    def __call__(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(THAW), *args], check=False, env={**self.env, **env}, cwd=self.cwd, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *args: str, **env: str) -> str:
        done = self(*args, **env)
        assert done.returncode == 0, f"thaw {' '.join(args)} failed ({done.returncode}):\n{done.stderr}"
        return done.stdout

    def fails(self, *args: str, message: str, code: int = 1, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a command that must fail with one ``error:`` line holding ``message`` (at most a hint), no traceback."""
        done = self(*args, **env)
        assert done.returncode == code, done
        lines = done.stderr.splitlines()
        assert lines and lines[0].startswith("error: "), done.stderr
        assert message in lines[0], done.stderr
        assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        # a suite started in the background (`pytest &`) inherits SIGINT ignored, and so would the command:
        # give it the default disposition, as a terminal user's command has
        return subprocess.Popen([str(THAW), *args], env={**self.env, **env}, cwd=self.cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    @staticmethod
    def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
        """Wait for a command started with ``start``; if it hangs, fail with the stacks of its threads."""
        try:
            return proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate()
            raise AssertionError(f"thaw {' '.join(proc.args[1:])} hung for {timeout:.0f}s; its stacks:\n{err}") from None

    def run_worker(self, name: str = "w", *options: str, **env: str) -> str:
        """``thaw run --name NAME --wait -- python serve.py``; the worker gets ``env``."""
        env.setdefault("TEST_LOG", str(self.cwd / f"{name}.data.log"))
        return self.ok("run", "--name", name, *options, "--", sys.executable, str(SERVE), **env)


@pytest.fixture
def thaw(tmp_path: Path) -> Iterator[Thaw]:
    home = tmp_path / "home"
    yield Thaw(home, tmp_path)
    stop_everything(home)


@pytest.fixture
def agent(thaw: Thaw, tmp_path: Path) -> Iterator[Path]:
    """An agent serving ``thaw``'s home on a unix socket; yields the socket's path."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen([str(THAW), "agent", "serve", "--socket", str(sock), "--home", str(thaw.home)],
                            env=thaw.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: sock.exists(), 30, "the agent's socket")
    yield sock
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
