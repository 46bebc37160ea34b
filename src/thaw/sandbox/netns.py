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

from thaw import proc
from thaw.errors import HostError
from thaw.model.sandbox import NET_KEY
from thaw.sandbox.init import loopback_up

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def fresh() -> int:
    """An fd of a new network namespace with loopback up. The caller closes it."""
    result: dict[str, object] = {}

    def make() -> None:
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            loopback_up()
            result["fd"] = os.open(proc.ns_path("self", "net", tid=threading.get_native_id()), os.O_RDONLY)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller's thread below
            result["error"] = exc

    t = threading.Thread(target=make, name="thaw-netns")
    t.start()
    t.join()
    if "error" in result:
        raise HostError(f"cannot create a network namespace: {result['error']}",
                        hint="thaw needs root (CAP_SYS_ADMIN) to restore into new namespaces")
    fd = result["fd"]
    assert isinstance(fd, int)  # make() put it there, or an error
    return fd


def dump_external(pid: int) -> str:
    """The CRIU ``external`` entry that marks ``pid``'s network namespace as external."""
    return f"net[{proc.ns_inode(pid, 'net')}]:{NET_KEY}"
