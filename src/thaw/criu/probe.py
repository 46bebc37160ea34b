"""What this kernel and this CRIU can dump, found by trying it on a small process of our own.

CRIU 4.1.1 cannot dump any TCP or UDP socket on Linux >= 6.16: it reads SO_PASSCRED and
SO_PASSSEC from every socket it dumps, and those kernels refuse both on inet sockets
(``sockets: Can't get 1:16 opt: Operation not supported``; checkpoint-restore/criu#2705,
fixed after 4.1). Kernel and CRIU versions alone do not say it (distributions backport),
so ``thaw doctor`` asks: it dumps a process holding one listening IPv4 socket.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from thaw.criu.locate import Criu
from thaw.criu.rpc import DumpOptions, dump
from thaw.errors import CriuError

# listens on an ephemeral IPv4 port of the loopback, says so, and waits to be dumped
_HOLDER = ("import socket, sys, time\n"
           "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
           "s.bind(('127.0.0.1', 0)); s.listen()\n"
           "print('ready', flush=True)\n"
           "time.sleep(120)\n")


def can_dump_ipv4(criu: Criu, timeout: float = 30.0) -> tuple[bool, str]:
    """(True, detail) when CRIU dumped a process holding a listening IPv4 socket; (False, CRIU's reason) otherwise."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # its own session: dumpable alone
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != b"ready":
            return False, "the probe process did not start"
        with tempfile.TemporaryDirectory(prefix="thaw-probe-") as d:
            t0 = time.perf_counter()
            dump(DumpOptions(pid=holder.pid, images_dir=Path(d) / "images", work_dir=Path(d), leave_running=True,
                             timeout_s=int(timeout)), criu=criu)
            return True, f"dumped a listening IPv4 socket in {time.perf_counter() - t0:.2f}s"
    except CriuError as exc:
        return False, exc.criu_message.splitlines()[0][:200]
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()
