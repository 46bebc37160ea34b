"""Agents as real processes, each one a "node", and helpers to drive them.

A node is an agent process in a mount namespace of its own, where the node's private
directory is bind-mounted at one common home path. Every node thus sees *its own*
state at the *same* path, as real nodes do (thaw requires the same home path on every
node, because a restored worker finds its control directory under it), while the test
sees each node's files under ``node.root``. Nodes share only the artifact store.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from workers import wait_until

from thaw.api.client import AgentClient

HERE = Path(__file__).resolve().parent
WORKER = HERE / "agent_worker.py"


@dataclass
class Node:
    """One agent process and the directories it owns."""

    name: str
    home: Path  # the path the agent and its workers see
    root: Path  # where the test finds that node's home
    staging: Path
    socket: Path
    store: str
    log: Path
    args: list[str] = field(default_factory=list)
    #: False: a plain agent process in the test's own mount namespace (home == root)
    namespaced: bool = True
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Node:
        self.socket.unlink(missing_ok=True)
        serve = [sys.executable, "-m", "thaw", "agent", "serve", "--socket", str(self.socket), "--home", str(self.home),
                 "--store", self.store, "--staging", str(self.staging), "--node", self.name, *self.args]
        bind = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind, "sh", str(self.root),
               str(self.home), *serve] if self.namespaced else serve
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        with self.client(timeout=2) as c:
            wait_until(lambda: self._exited() or c.healthy(), timeout, f"agent {self.name} to answer")
        if self._exited():
            raise AssertionError(f"agent {self.name} exited: {self.log_tail()}")
        return self

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def client(self, timeout: float = 30.0) -> AgentClient:
        return AgentClient(self.socket, timeout=timeout)

    def host(self, path: str | Path) -> Path:
        """Where the test finds a path that the agent reported (under its home)."""
        return self.root / Path(path).relative_to(self.home)

    def worker_state(self, control_dir: str, timeout: float = 15.0) -> dict[str, Any]:
        sock = self.host(control_dir) / "http.sock"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://worker",
                          timeout=5) as http:
            def get() -> dict[str, Any] | None:
                try:
                    return http.get("/state").json()
                except httpx.TransportError:
                    return None

            return wait_until(get, timeout, f"the worker to serve on {sock}")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def launch_worker(node: Node, name: str, **env: str) -> Any:
    """Launch the test worker through the agent and wait until it is parked at its quiesce point."""
    with node.client() as c:
        w = c.launch(name, [sys.executable, str(WORKER)], env=env)
        return wait_until(lambda: (x := c.worker(w.id)).parked and x, 30, f"worker {name} to park")


def wait_phase(node: Node, job_id: str, phases: tuple[str, ...], timeout: float = 30.0) -> str:
    """Poll the job until it is in one of ``phases``; return that phase."""
    with node.client() as c:
        def probe() -> str | None:
            job = c.job(job_id)
            assert not job.state.finished, f"job finished before reaching {phases}: {job}"
            return job.progress.phase if job.progress and job.progress.phase in phases else None

        return wait_until(probe, timeout, f"job {job_id} to reach {phases}", interval=0.005)

