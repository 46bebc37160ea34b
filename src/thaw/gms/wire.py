"""Frames on the GMS unix socket: a 4-byte length, a JSON body, and file descriptors beside it.

Physical GPU memory travels between processes as POSIX file descriptors
(``cuMemExportToShareableHandle``), which only a unix socket can carry (SCM_RIGHTS).
The fds ride on the 4-byte length prefix of a frame — one ``sendmsg`` — and the body
follows with ``sendall``, so a short write of a large body can never separate fds from
the frame they belong to. Everything received is hostile until checked: a frame longer
than :data:`MAX_FRAME`, more fds than :data:`MAX_FDS`, truncated ancillary data or a
body that is not a JSON object raises :class:`thaw.errors.GmsError`, after closing any
fds that arrived.
"""

from __future__ import annotations

import array
import json
import socket
import struct
from collections.abc import Sequence
from typing import Any

from thaw.errors import GmsError

#: the kernel's SCM_MAX_FD: no more fds fit in one message
MAX_FDS = 253
#: a layout of a few thousand tensors is ~1 MB of JSON; anything far larger is an attack or a bug
MAX_FRAME = 16 << 20
_HEADER = struct.Struct("!I")


def send(sock: socket.socket, body: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one frame; ``fds`` (at most MAX_FDS) are duplicated into the peer, the caller still owns its copies."""
    if len(fds) > MAX_FDS:
        raise GmsError(f"cannot send {len(fds)} descriptors in one frame (at most {MAX_FDS})")
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise GmsError(f"frame of {len(data)} bytes exceeds the limit of {MAX_FRAME}")
    header = _HEADER.pack(len(data))
    if fds:
        sent = sock.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        if sent != len(header):  # a 4-byte stream write is never split in practice; be exact anyway
            sock.sendall(header[sent:])
    else:
        sock.sendall(header)
    sock.sendall(data)


def recv(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Receive one frame: (body, fds). The caller owns (and must close) the fds. EOF raises ConnectionError."""
    fds: list[int] = []
    try:
        header = bytearray()
        while len(header) < _HEADER.size:
            data, ancdata, flags, _ = sock.recvmsg(_HEADER.size - len(header), socket.CMSG_SPACE(MAX_FDS * 4))
            fds.extend(_take_fds(ancdata))
            if flags & socket.MSG_CTRUNC:
                raise GmsError("descriptors were truncated in transit (more than the frame may carry)")
            if not data:
                raise ConnectionError("the GMS connection was closed")
            header += data
        (length,) = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise GmsError(f"peer announced a frame of {length} bytes (limit {MAX_FRAME})")
        body = _recv_exact(sock, length)
        try:
            decoded = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GmsError(f"peer sent a frame that is not JSON: {exc}") from None
        if not isinstance(decoded, dict):
            raise GmsError(f"peer sent a frame that is not a JSON object ({type(decoded).__name__})")
        return decoded, fds
    except BaseException:
        close_all(fds)
        raise


def close_all(fds: Sequence[int]) -> None:
    import os

    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _take_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    return fds


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("the GMS connection was closed in the middle of a frame")
        got += k
    return bytes(buf)
