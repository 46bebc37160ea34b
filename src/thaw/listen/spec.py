"""Where an unmodified server is parked: which bind of a listening socket, and what counts as "too early".

One definition for the CLI (``thaw run --park-at-listen``), the agent's launch request
(pydantic validates this dataclass as a field) and the hook inside the worker, which
reads it from ``$THAW_PARK_AT_LISTEN``. Standard library only: it is imported at the
start of every Python process of a parked server.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass
from typing import Any

#: the environment variable that carries the spec (JSON) into the server's processes
ENV_SPEC = "THAW_PARK_AT_LISTEN"
#: set by the first process of the sandbox that loads the hook: only that process parks (see thaw.listen)
ENV_ROOT = "THAW_PARK_ROOT"
#: "1" lets a parked server import uvloop (whose libuv sets up an io_uring that CRIU cannot snapshot)
ENV_KEEP_UVLOOP = "THAW_PARK_KEEP_UVLOOP"

EXPECT_GPU = ("auto", "yes", "no")


@dataclass(frozen=True)
class ParkAtListen:
    """Park the server at the ``nth`` bind that matches (a TCP port, a unix path, or any TCP listener).

    A matching bind sooner than ``min_warmup_s`` after the process started, or (``expect_gpu``)
    before any process of the worker holds a GPU, is *early*: the server bound its socket
    before warming up, so thaw lets it serve unparked and reports it rather than snapshot it cold.
    """

    port: int | None = None  # only a bind to this TCP port
    path: str | None = None  # only a bind of this unix socket path ("@name": abstract)
    nth: int = 1  # park at the n-th matching bind (earlier ones go through)
    min_warmup_s: float = 2.0
    expect_gpu: str = "auto"  # auto: yes where the sandbox sees /dev/nvidiactl and CUDA_VISIBLE_DEVICES allows a GPU

    def __post_init__(self) -> None:
        if self.port is not None and self.path is not None:
            raise ValueError("give a port or a path to park at, not both")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if self.path is not None and (not self.path or not (self.path.startswith("/") or self.path.startswith("@"))):
            raise ValueError(f"path must be absolute (or '@name' for an abstract socket), got {self.path!r}")
        if isinstance(self.nth, bool) or not isinstance(self.nth, int) or self.nth < 1:
            raise ValueError(f"nth must be 1 or more, got {self.nth!r}")
        if not 0 <= self.min_warmup_s <= 86_400:
            raise ValueError(f"min_warmup_s must be 0-86400 seconds, got {self.min_warmup_s}")
        if self.expect_gpu not in EXPECT_GPU:
            raise ValueError(f"expect_gpu must be one of {', '.join(EXPECT_GPU)}, got {self.expect_gpu!r}")

    def matches(self, family: int, kind: int, address: Any) -> bool:
        """Does a bind of a socket of ``family``/``kind`` to ``address`` count (a listening socket we look for)?"""
        if kind != socket.SOCK_STREAM:
            return False
        if self.path is not None:
            return family == socket.AF_UNIX and unix_name(address) == self.path
        if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple) or len(address) < 2:
            return False
        return self.port is None or address[1] == self.port

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, raw: str) -> ParkAtListen:
        """Parse ``$THAW_PARK_AT_LISTEN``; ValueError says what is wrong."""
        try:
            fields = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{ENV_SPEC} is not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise ValueError(f"{ENV_SPEC} must be a JSON object")
        known = cls.__dataclass_fields__.keys()
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ValueError(f"{ENV_SPEC} has unknown fields: {', '.join(unknown)}")
        return cls(**fields)


def unix_name(address: Any) -> str:
    """A unix socket address as thaw spells it: the path, or "@name" for an abstract one."""
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    text = str(address)
    return "@" + text[1:] if text.startswith("\0") else text


def describe(family: int, address: Any) -> str:
    """The address a server binds, as a URL-like string: ``tcp://0.0.0.0:8000``, ``tcp://[::]:8000``,
    ``unix:///run/app.sock``, ``unix:@name``; thaw's HTTP canary connects to it (thaw.pipeline.http_canary)."""
    if family == socket.AF_UNIX:
        name = unix_name(address)
        return f"unix:{name}" if name.startswith("@") else f"unix://{name}"
    host, port = address[0], address[1]
    if family == socket.AF_INET6:
        return f"tcp://[{host or '::'}]:{port}"
    return f"tcp://{host or '0.0.0.0'}:{port}"
