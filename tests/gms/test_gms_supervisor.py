"""The agent's services: one per device, started again when one dies, stopped with the agent."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from thaw.gms import Client, socket_path
from thaw.gms.supervisor import Supervisor


def wait_for(cond, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


def answers(path: Path) -> bool:
    try:
        with Client(path, timeout=2) as c:
            return bool(c.status().device)
    except Exception:  # noqa: BLE001 - not up (yet)
        return False


def test_one_service_per_device_restarted_when_it_dies_and_stopped_with_the_supervisor(tmp_path: Path,
                                                                                      model_dir: Path) -> None:
    sup = Supervisor(tmp_path / "gms", [model_dir], devices=["memfd:a", "memfd:b"])
    sup.start()
    try:
        paths = {d: socket_path(tmp_path / "gms", d) for d in ("memfd:a", "memfd:b")}
        for p in paths.values():
            wait_for(lambda p=p: answers(p))
        first = sup.procs["memfd:a"].pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: sup.procs["memfd:a"].pid != first and answers(paths["memfd:a"]))
        assert sup.restarts["memfd:a"] == 1 and sup.procs["memfd:b"].poll() is None
    finally:
        sup.stop()
    assert all(p.poll() is not None for p in sup.procs.values())
