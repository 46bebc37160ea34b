"""Talking to a GPU memory service: acquire a weight set (and hold it), prefetch one, ask what is resident.

A client object is one connection. ``acquire`` returns the set's layout and one fd per
chunk; the connection then *is* the hold: keep it open while the memory is mapped, close
it (``close()``) once unmapped. Prefetching from the pipeline uses a short-lived client.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from thaw.errors import GmsError, GmsUnavailable
from thaw.gms import wire
from thaw.gms.models import Layout, Reply, Request, ServiceStatus, SetStatus, WeightSpec

DEFAULT_TIMEOUT_S = 1800.0  # an acquire waits for a load; 65 GB from a cold disk takes a while


def socket_path(gms_dir: Path, device: str) -> Path:
    """The socket of the service for ``device`` ("GPU-<uuid>" or "memfd:<name>") under ``gms_dir``.

    A GPU's socket is named by the first 8 hex digits of its UUID: a unix socket path holds
    at most 107 bytes, and a full UUID would leave little room for the directory. The
    service states its full UUID in every layout, and a worker refuses memory from a
    service of another GPU.
    """
    name = device[:12] if device.upper().startswith("GPU-") else device.replace(":", "-")
    return Path(gms_dir) / f"{name}.sock"


class Client:
    def __init__(self, path: Path, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = Path(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise GmsUnavailable(f"no GPU memory service answers at {self.path} ({exc.strerror or exc})") from None
        self.sock: socket.socket | None = sock

    @classmethod
    def for_device(cls, gms_dir: Path, device: str, **kw: Any) -> Client:
        return cls(socket_path(gms_dir, device), **kw)

    def acquire(self, spec: WeightSpec) -> tuple[Layout, list[int]]:
        reply, fds = self._call(Request(op="acquire", spec=spec))
        if reply.layout is None or len(fds) != len(reply.layout.chunks):
            wire.close_all(fds)
            raise GmsError(f"the service sent {len(fds)} descriptors for a layout of "
                           f"{len(reply.layout.chunks) if reply.layout else '?'} chunks", code="protocol")
        return reply.layout, fds

    def prefetch(self, spec: WeightSpec, *, wait: bool = False) -> SetStatus:
        reply, _ = self._call(Request(op="prefetch", spec=spec, wait=wait))
        assert reply.set is not None
        return reply.set

    def release(self, key: str | None = None) -> None:
        self._call(Request(op="release", key=key))

    def status(self) -> ServiceStatus:
        reply, _ = self._call(Request(op="status"))
        assert reply.status is not None
        return reply.status

    def evict(self, key: str) -> SetStatus:
        reply, _ = self._call(Request(op="evict", key=key))
        assert reply.set is not None
        return reply.set

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, req: Request) -> tuple[Reply, list[int]]:
        if self.sock is None:
            raise GmsError("this GMS client is closed", code="closed")
        try:
            wire.send(self.sock, req.model_dump(mode="json"))
            body, fds = wire.recv(self.sock)
        except (ConnectionError, OSError) as exc:
            self.close()
            raise GmsUnavailable(f"the GPU memory service at {self.path} went away ({exc})") from None
        try:
            reply = Reply.model_validate(body)
        except ValidationError as exc:
            wire.close_all(fds)
            raise GmsError(f"the GPU memory service sent an invalid reply: {exc.errors()[0]['msg']}",
                           code="protocol") from None
        if not reply.ok:
            wire.close_all(fds)
            err = reply.error
            raise GmsError(err.message if err else "the GPU memory service refused the request",
                           code=err.code if err else "error", hint=err.hint if err else None)
        return reply, fds
