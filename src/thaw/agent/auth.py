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

The transport and peer are learnt when uvicorn accepts the connection (a subclass of
its h11 protocol puts them into the ASGI scope's ``state``), because ASGI itself does
not expose the socket.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
from pathlib import Path
from typing import Any

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

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self._by_digest = {_digest(t): ident for t, ident in (tokens or {}).items()}

    @classmethod
    def load(cls, path: Path | None) -> Tokens:
        if path is None:
            return cls()
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError("token-file", f"cannot read {path}: {exc.strerror}") from exc
        tokens: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            ident, sep, token = line.partition(":")
            if not sep:
                ident, token = "", ident
            token = token.strip()
            if len(token) < 16:
                raise ConfigError("token-file", f"a token in {path} is shorter than 16 characters",
                                  hint="generate one with: openssl rand -hex 32")
            tokens[token] = ident.strip() or f"token-{_digest(token)[:8]}"
        return cls(tokens)

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def identify(self, header: str | None) -> str | None:
        """The identity of the bearer token in an Authorization header, or None."""
        if not header or not header.lower().startswith("bearer "):
            return None
        given = _digest(header[7:].strip())
        for known, ident in self._by_digest.items():
            if hmac.compare_digest(known, given):
                return ident
        return None


def _digest(token: str) -> str:
    # compared as digests: equal length, constant time, and no token kept in memory as given
    return hashlib.sha256(token.encode()).hexdigest()
