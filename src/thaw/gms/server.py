"""The GMS on its unix socket: one thread per connection, one request frame → one reply frame.

A connection that acquired a set holds it until it closes — "the socket connection is the
lock" (Dynamo's GMS) — so a worker that dies releases its sets without telling anyone,
and the service never evicts memory a live worker maps. Replies to ``acquire`` carry one
fd per chunk; the service closes its copies right after sending.

The socket is ``<gms dir>/<device>.sock`` (:func:`thaw.gms.client.socket_path`), created
with the mode given (0660 by default: root and the thaw group). A stale socket file
from a dead service is replaced; a live one is refused, so two services never share a GPU.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from thaw.errors import ConfigError, GmsError, ThawError
from thaw.gms import wire
from thaw.gms.client import socket_path
from thaw.gms.models import ErrorBody, Reply, Request
from thaw.gms.service import WeightService

_ids = itertools.count(1)


class Server:
    def __init__(self, service: WeightService, gms_dir: Path, *, mode: int = 0o660) -> None:
        self.service = service
        self.path = socket_path(gms_dir, service.backend.device)
        self.mode = mode
        self.sock: socket.socket | None = None
        self.stopping = threading.Event()

    def bind(self) -> None:
        if len(str(self.path).encode()) > 107:
            raise ConfigError("dir", f"{self.path} is longer than a unix socket path may be (107 bytes)",
                              hint="use a shorter --dir (THAW_GMS_DIR) or THAW_HOME")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _alive(self.path):
                raise ConfigError("gms", f"a GPU memory service already listens on {self.path}",
                                  hint="stop it first; one service per GPU")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, self.mode)
        sock.listen(64)
        self.sock = sock

    def serve_forever(self) -> None:
        assert self.sock is not None, "bind() first"
        with _stop_on_signals(self):
            while not self.stopping.is_set():
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    if self.stopping.is_set():
                        break
                    raise
                threading.Thread(target=self._handle, args=(conn, next(_ids)), daemon=True,
                                 name="gms-conn").start()
        self.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.service.close()

    def _handle(self, conn: socket.socket, holder: int) -> None:
        try:
            while True:
                try:
                    body, fds = wire.recv(conn)
                except (ConnectionError, OSError):
                    return
                wire.close_all(fds)  # clients never send descriptors
                reply, out = self._dispatch(body, holder)
                try:
                    wire.send(conn, reply.model_dump(mode="json"), out)
                finally:
                    wire.close_all(out)
        except GmsError:
            return  # a malformed frame: drop the connection
        finally:
            self.service.release(holder)
            conn.close()

    def _dispatch(self, body: dict[str, Any], holder: int) -> tuple[Reply, list[int]]:
        try:
            req = Request.model_validate(body)
            match req.op:
                case "acquire":
                    layout, fds = self.service.acquire(_need_spec(req), holder)
                    return Reply(ok=True, layout=layout), fds
                case "prefetch":
                    return Reply(ok=True, set=self.service.prefetch(_need_spec(req), wait=req.wait)), []
                case "release":
                    self.service.release(holder, req.key)
                    return Reply(ok=True), []
                case "status":
                    return Reply(ok=True, status=self.service.status()), []
                case "evict":
                    if not req.key:
                        raise ConfigError("key", "evict needs the key of a resident set (thaw gms status lists them)")
                    return Reply(ok=True, set=self.service.evict(req.key)), []
        except ValidationError as exc:
            return Reply(ok=False, error=ErrorBody(code="bad_request", message=_first_error(exc))), []
        except GmsError as exc:
            return Reply(ok=False, error=ErrorBody(code=exc.code, message=exc.message, hint=exc.hint)), []
        except ThawError as exc:
            return Reply(ok=False, error=ErrorBody(code=exc.reason, message=exc.message, hint=exc.hint)), []
        raise AssertionError("unreachable")


def _need_spec(req: Request) -> Any:
    if req.spec is None:
        raise ConfigError("spec", f"{req.op} needs a weight spec")
    return req.spec


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"invalid request: {where}: {err.get('msg', 'invalid')}"


def _alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


@contextlib.contextmanager
def _stop_on_signals(server: Server) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: server.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
