"""One GPU memory service per GPU of the node, kept running by the agent.

The agent (``THAW_GMS=1``) starts ``thaw gms serve`` for every GPU it sees, each as its
own process (a service's CUDA context and pinned buffers are per GPU, and a crash of one
must not take the others — or the agent — down), and starts a service again when it
exits, with a back-off. Workers that mapped weights from a service that died keep them:
imported memory outlives its exporter. Stopping the agent stops the services; resident
weights go with them.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("thaw.gms")

BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class Supervisor:
    def __init__(self, gms_dir: Path, allow: list[Path], *, budget_gb: float | None = None,
                 devices: list[str] | None = None, log_dir: Path | None = None) -> None:
        self.gms_dir = gms_dir
        self.allow = allow
        self.budget_gb = budget_gb
        self.devices = devices
        self.log_dir = log_dir or gms_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> list[str]:
        """Start a service per GPU (every GPU of the host unless ``devices`` names some); returns their devices."""
        if self.devices is None:
            from thaw.cuda import devices

            self.devices = [g.uuid for g in devices()]
        self.gms_dir.mkdir(parents=True, exist_ok=True)
        for device in self.devices:
            self._spawn(device)
        self._thread = threading.Thread(target=self._watch, name="gms-supervisor", daemon=True)
        self._thread.start()
        return list(self.devices)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()

    def _spawn(self, device: str) -> None:
        argv = [sys.executable, "-m", "thaw", "gms", "serve", "--gpu", device, "--dir", str(self.gms_dir)]
        for root in self.allow:
            argv += ["--allow", str(root)]
        if self.budget_gb:
            argv += ["--budget-gb", str(self.budget_gb)]
        out = open(self.log_dir / f"{device.replace(':', '-')}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.procs[device] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                                  start_new_session=True)
        finally:
            out.close()
        log.info("GPU memory service for %s started (pid %d)", device, self.procs[device].pid)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for device, proc in list(self.procs.items()):
                if proc.poll() is None:
                    continue
                n = self.restarts.get(device, 0)
                delay = BACKOFF_S[min(n, len(BACKOFF_S) - 1)]
                log.warning("GPU memory service for %s exited with %s; starting it again in %.0f s",
                            device, proc.returncode, delay)
                if self._stop.wait(delay):
                    return
                self.restarts[device] = n + 1
                self._spawn(device)
