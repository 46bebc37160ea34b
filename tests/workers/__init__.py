"""Test workers (real programs using thaw.worker) and the helpers that drive and observe them.

``serve.py`` is the worker of the pipeline and CLI tests (state, log file, HTTP on a
unix socket after quiesce); ``park.py`` only parks and records what the SDK did, for
the worker SDK's tests; ``tcp.py`` serves on a TCP port of its own loopback (thaw bench). Every wait here polls against a deadline.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

HERE = Path(__file__).resolve().parent
SERVE = HERE / "serve.py"
PARK = HERE / "park.py"
TCP = HERE / "tcp.py"
HTTP_SOCKET = "http.sock"

T = TypeVar("T")


def wait_until(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def client(control_dir: Path, timeout: float = 10.0) -> httpx.Client:
    """An HTTP client for the worker serving on ``<control_dir>/http.sock``, once it serves."""
    sock = Path(control_dir) / HTTP_SOCKET

    def connect() -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://worker", timeout=timeout)

    def answers() -> bool:
        try:
            with connect() as http:
                return http.get("/state").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, timeout, f"the worker to serve on {sock}")
    return connect()


def state(control_dir: Path) -> dict[str, Any]:
    with client(control_dir) as http:
        return http.get("/state").json()


def processes_of(home: Path) -> list[int]:
    """Live (non-zombie) processes that belong to sandboxes of the thaw home ``home``: launched or restored.

    Every worker thaw starts carries ``THAW_RUN_DIR=<home>/run`` in its environment,
    and a restored copy has the same environment in its memory, so this finds copies
    that thaw lost track of too.
    """
    marker = f"THAW_RUN_DIR={Path(home) / 'run'}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue  # gone, or a kernel thread
        if marker in env:  # a zombie's environ reads empty
            found.append(int(entry))
    return found


def stop_everything(home: Path) -> None:
    """Kill every sandbox of the thaw home ``home``: those thaw knows of, then any it lost track of.

    A CRIU restore started by a test may outlive it (CRIU finishes even when its caller is
    gone): wait for it first, so that the copy it makes is not created after the sweep.
    """
    from thaw.config import Settings
    from thaw.pipeline import list_instances

    wait_until(lambda: not criu_working(home), 60, f"CRIU to finish its work under {home}", interval=0.05)
    for inst in list_instances(Settings(home=home)):
        inst.kill(timeout=10)
    kill_all(processes_of(home))


def criu_working(home: Path) -> list[int]:
    """Processes writing a log in an operation directory of the thaw home ``home`` (CRIU keeps its log open)."""
    prefix = f"{Path(home) / 'instances'}/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            targets = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")]
        except OSError:
            continue
        if any(t.startswith(prefix) and "/ops/" in t for t in targets):
            found.append(int(entry))
    return found


def kill_all(pids: list[int]) -> None:
    """SIGKILL the given processes (found by ``processes_of``) and wait until they are gone or zombies."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not [p for p in pids if _live(p)], 10, f"processes {pids} to die")


def _live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it went between open and read
        return False
