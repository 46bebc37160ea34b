"""Fresh network namespaces for restored sandboxes.

CRIU records a sandbox's network namespace as external (key ``NET_KEY``) and a
restore hands it a new, empty one through ``inherit_fd``: every restored copy gets
its own loopback, so copies never collide on ports or on libcuda's abstract unix
socket. The namespace is created on a short-lived thread (``unshare(CLONE_NEWNET)``
moves only the calling thread), which brings loopback up and leaves behind an open
descriptor that keeps the namespace alive.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from thaw.errors import HostError
from thaw.sandbox.init import loopback_up

CLONE_NEWNET = 0x40000000
NET_KEY = "thaw-netns"

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def fresh() -> int:
    """An fd of a new network namespace with loopback up. The caller closes it."""
    result: dict[str, object] = {}

    def make() -> None:
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            loopback_up()
            result["fd"] = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        except BaseException as exc:  # reported to the caller's thread below
            result["error"] = exc

    t = threading.Thread(target=make, name="thaw-netns")
    t.start()
    t.join()
    if "error" in result:
        raise HostError(f"cannot create a network namespace: {result['error']}",
                        hint="thaw needs root (CAP_SYS_ADMIN) to restore into new namespaces")
    return int(result["fd"])  # type: ignore[arg-type]


def dump_external(pid: int) -> str:
    """The CRIU ``external`` entry that marks ``pid``'s network namespace as external."""
    return f"net[{os.stat(f'/proc/{pid}/ns/net').st_ino}]:{NET_KEY}"


def run_inside(pid: int, call: Callable[[], T]) -> T:
    """``call()`` on a short-lived thread inside ``pid``'s network namespace; its result, or its exception.

    ``setns(CLONE_NEWNET)`` moves only the calling thread, and sockets keep the namespace they
    were made in: whatever ``call`` connects to (``127.0.0.1:PORT``) is the sandbox's loopback.
    """
    result: dict[str, object] = {}

    def enter() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
        except OSError as exc:
            result["cannot_enter"] = exc
            return
        try:
            result["value"] = call()
        except BaseException as exc:  # reported to the caller's thread below
            result["error"] = exc

    t = threading.Thread(target=enter, name="thaw-netns-enter")
    t.start()
    t.join()
    if "cannot_enter" in result:
        raise HostError(f"cannot enter the network namespace of pid {pid}: {result['cannot_enter']}",
                        hint="thaw needs root (CAP_SYS_ADMIN) to reach a sandbox's loopback")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]
