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


def run_in(pid: int, fn: Callable[[], T]) -> T:
    """Call ``fn`` on a short-lived thread that has joined ``pid``'s network namespace; return what it returns.

    ``setns(CLONE_NEWNET)`` moves the calling thread only, and every socket that thread
    creates belongs to that namespace for its whole life: ``fn`` reaches ``127.0.0.1``
    of the sandbox (e.g. a server the sandbox listens with) and nothing else of thaw
    ever runs there. ``fn``'s exception is raised here.
    """
    result: dict[str, object] = {}
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    except OSError as exc:
        raise HostError(f"cannot open the network namespace of pid {pid}: {exc}",
                        hint="the worker may have exited; thaw needs root to enter it") from exc

    def enter_and_call() -> None:
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise HostError(f"cannot enter the network namespace of pid {pid}: {os.strerror(err)}",
                                hint="thaw needs root (CAP_SYS_ADMIN) to reach a sandbox's network")
            result["value"] = fn()
        except BaseException as exc:  # reported to the caller's thread below
            result["error"] = exc

    try:
        t = threading.Thread(target=enter_and_call, name=f"thaw-netns-{pid}")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]
