"""Who is calling: peer credentials on the unix socket, bearer tokens over TCP.

Security model (docs/agent.md):

* **Unix socket** (the default, ``/run/thaw/agent.sock``): access is granted by the
  socket file's permissions (0600 root, or 0660 with ``--socket-group``). The caller
  is identified by the kernel (``SO_PEERCRED``: uid, gid, pid), not by anything it says.
* **TCP** (``--listen HOST:PORT``, off by default): every request must carry
  ``Authorization: Bearer <token>`` matching a token from ``--token-file``. Without a
  configured token every TCP request is refused (401): TCP is never open by accident.
* A connection whose transport the agent does not know (neither of the above) is
  treated like TCP: fail closed.
* **Scopes**: a token may only read (``identity@read:token``: status, metrics, workers,
  jobs and artifacts; GET alone) or operate (the default: everything). Give monitoring
  a read token; only the operator needs one that operates.
* A refused request is answered 401 before its body is read, and the audit log gets one
  record per client address a minute (``RejectionLog``), however many it sends.

The transport and peer are learnt when uvicorn accepts the connection (a subclass of
its h11 protocol puts them into the ASGI scope's ``state``), because ASGI itself does
not expose the socket.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from uvicorn.protocols.http.h11_impl import H11Protocol

from thaw.errors import ConfigError

PEER_KEY = "thaw_peer"


class PeerProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus the peer of each connection in ``request.state.thaw_peer``."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        peer: dict[str, Any] = {"transport": "unknown"}
        if sock is not None and sock.family == socket.AF_UNIX:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", creds)
            peer = {"transport": "unix", "uid": uid, "gid": gid, "pid": pid}
        elif sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            host, port = sock.getpeername()[:2]
            peer = {"transport": "tcp", "address": f"{host}:{port}"}
        # a per-connection copy: uvicorn copies app_state into every request's scope["state"]
        self.app_state = {**self.app_state, PEER_KEY: peer}


class Tokens:
    """Bearer tokens accepted over TCP, each with the identity recorded in the audit log.

    Token file: one token per line, optionally ``identity:token``; blank lines and
    ``#`` comments are ignored. Without an identity the audit log names a token by
    the first 8 hex digits of its SHA-256.
    """

    def __init__(self, tokens: dict[str, str] | None = None, scopes: dict[str, Scope] | None = None) -> None:
        self._by_digest = {_digest(t): ident for t, ident in (tokens or {}).items()}
        self._scope = {_digest(t): (scopes or {}).get(t, "operate") for t in (tokens or {})}

    @classmethod
    def load(cls, path: Path | None) -> Tokens:
        if path is None:
            return cls()
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError("token-file", f"cannot read {path}: {exc.strerror}") from exc
        tokens: dict[str, str] = {}
        scopes: dict[str, Scope] = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            ident, sep, token = line.partition(":")
            if not sep:
                ident, token = "", ident
            ident, _, scope = ident.strip().partition("@")
            token = token.strip()
            if len(token) < 16:
                raise ConfigError("token-file", f"a token in {path} is shorter than 16 characters",
                                  hint="generate one with: openssl rand -hex 32")
            if scope not in ("", "read", "operate"):
                raise ConfigError("token-file", f"unknown scope {scope!r} in {path}",
                                  hint="a line is [IDENTITY[@read|@operate]:]TOKEN")
            tokens[token] = ident or f"token-{_digest(token)[:8]}"
            scopes[token] = "read" if scope == "read" else "operate"
        return cls(tokens, scopes)

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def identify(self, header: str | None) -> Caller | None:
        """Who holds the bearer token in an Authorization header, and what it may do; None for no known token."""
        if not header or not header.lower().startswith("bearer "):
            return None
        given = _digest(header[7:].strip())
        for known, ident in self._by_digest.items():
            if hmac.compare_digest(known, given):
                return Caller(ident, self._scope[known])
        return None


Scope = Literal["read", "operate"]
#: what a read-only token may do: look, never change
READ_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class Caller:
    identity: str
    scope: Scope

    def may(self, method: str) -> bool:
        return self.scope == "operate" or method.upper() in READ_METHODS


class RejectionLog:
    """Which refused requests reach the audit log: the first from an address, then one a minute with the count.

    A client sending junk as fast as it can must not fill the disk with audit records
    (before: +17 MiB in 5 s, each written with fsync); the metrics count every one.
    """

    def __init__(self, interval_s: float = 60.0, max_addresses: int = 4096) -> None:
        self.interval_s = interval_s
        self.max_addresses = max_addresses
        self._seen: dict[str, tuple[float, int]] = {}  # address -> (last audited at, refused since)
        self._lock = threading.Lock()

    def admit(self, address: str) -> int | None:
        """The number of refusals to report now (this one included), or None to stay quiet."""
        now = time.monotonic()
        with self._lock:
            last, count = self._seen.get(address, (-self.interval_s, 0))
            count += 1
            if now - last < self.interval_s:
                self._seen[address] = (last, count)
                return None
            if len(self._seen) >= self.max_addresses:
                self._seen.clear()  # a flood from many addresses: forget, and audit at most one each again
            self._seen[address] = (now, 0)
            return count


def _digest(token: str) -> str:
    # compared as digests: equal length, constant time, and no token kept in memory as given
    return hashlib.sha256(token.encode()).hexdigest()
