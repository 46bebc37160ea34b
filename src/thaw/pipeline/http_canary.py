"""Canary over the server's own API (``--canary-http REQUESTS.jsonl``).

A server thaw does not own has no in-process canary, but it has an API. thaw sends a
few fixed requests (OpenAI-style completions or chats at temperature 0, or any HTTP
request) to the original right after the snapshot, records the answers in the
manifest, and replays them against every restored copy before that copy counts as
ready; a copy that answers differently fails its restore with CanaryMismatch and is
killed, as with the in-process canary::

    parse(text)                         the JSONL file → HttpCanaryRequest (one a line; limits and line numbers)
    record(serves, pid, requests)       → HttpCanary: the original's answers (each must be 2xx)
    check(canary, pid)                  replay against a restored copy; CanaryMismatch if one differs

Where the server is: it said so when it parked (``ReadyMarker.serves``, set by the
park-at-listen hook or by ``quiesce(serves=...)``). A TCP server listens inside its
sandbox's own network namespace, which nothing outside can reach. thaw joins that
namespace on a short-lived thread (``thaw.sandbox.netns.run_in``: ``setns`` moves one
thread, and the sockets it opens stay in the namespace) and calls ``127.0.0.1:PORT``
from there, so no port is forwarded or exposed and copies never collide. A unix socket
path is reached through ``/proc/PID/root``, the sandbox's own view of its files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import httpx
from pydantic import ValidationError

from thaw import proc
from thaw.errors import CanaryMismatch, CheckpointError, ConfigError, WorkerError
from thaw.sandbox import netns
from thaw.model.manifest import HttpCanary, HttpCanaryRequest, HttpExchange

FIELD = "canary-http"
MAX_REQUESTS = 64
MAX_BYTES = 1 << 20
#: how long a server may take from being let go to answering its first request
SERVE_TIMEOUT_S = 120.0
_RETRY_S = 0.05
_MISSING = "<thaw: not in the answer>"


def parse(text: str, *, where: str = "the canary requests") -> list[HttpCanaryRequest]:
    """The requests of a JSONL file, one JSON object a line (blank lines and ``#`` comments skipped).

    A line with ``prompt`` is an OpenAI completion (``POST /v1/completions``), one with
    ``messages`` an OpenAI chat (``POST /v1/chat/completions``); both get
    ``temperature: 0`` unless they set it, and compare the answer's ``choices``.
    Any other line is a request: ``{"method", "path", "body", "compare", "timeout_s"}``.
    """
    if len(text.encode()) > MAX_BYTES:
        raise ConfigError(FIELD, f"{where} are larger than {MAX_BYTES >> 20} MiB", hint="a few requests are enough")
    requests: list[HttpCanaryRequest] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise ConfigError(FIELD, f"line {number} of {where} is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(FIELD, f"line {number} of {where} must be a JSON object")
        try:
            requests.append(HttpCanaryRequest.of(raw))
        except (ValidationError, ValueError) as exc:
            raise ConfigError(FIELD, f"line {number} of {where}: {_brief(exc)}",
                              hint='e.g. {"prompt": "Hello", "max_tokens": 16} '
                                   'or {"method": "GET", "path": "/health"}') from None
    if not requests:
        raise ConfigError(FIELD, f"{where} hold no request")
    if len(requests) > MAX_REQUESTS:
        raise ConfigError(FIELD, f"{where} hold {len(requests)} requests; at most {MAX_REQUESTS}")
    return requests


def record(serves: str, pid: int, requests: Sequence[HttpCanaryRequest],
           wait_s: float = SERVE_TIMEOUT_S) -> HttpCanary:
    """Send ``requests`` to the original (host pid ``pid``, serving at ``serves``) and keep its answers."""
    exchanges = _exchange_all(serves, pid, list(requests), wait_s)
    for number, exchange in enumerate(exchanges, 1):
        if not 200 <= exchange.status < 300:
            raise CheckpointError(
                f"HTTP canary request {number} ({_what(exchange.request)}) got HTTP {exchange.status} from the "
                f"original: {_short(exchange.answer)}",
                hint="fix the request (path, model name) in the canary file; the artifact was not published",
            )
        missing = [path for path, value in _parts(exchange) if value == _MISSING]
        if missing:
            raise CheckpointError(
                f"HTTP canary request {number} ({_what(exchange.request)}): the original's answer has no "
                f"{', '.join(missing)}: {_short(exchange.answer)}",
                hint="fix 'compare' in the canary file; the artifact was not published",
            )
    return HttpCanary(serves=serves, exchanges=exchanges)


def check(canary: HttpCanary, pid: int, *, wait_s: float = SERVE_TIMEOUT_S,
          who: str = "the restored worker") -> list[Any]:
    """Replay the recorded requests against a restored copy; raise CanaryMismatch where an answer differs."""
    requests = [e.request for e in canary.exchanges]
    got = _exchange_all(canary.serves, pid, requests, wait_s)
    expected_view = [_view(e) for e in canary.exchanges]
    got_view = [_view(e) for e in got]
    for number, (want, have) in enumerate(zip(expected_view, got_view), 1):
        if _canonical(want) != _canonical(have):
            raise CanaryMismatch(
                f"{who} answers its HTTP canary differently: request {number} ({want['request']}): "
                f"expected HTTP {want['status']} {_short(want['answer'])}, got HTTP {have['status']} "
                f"{_short(have['answer'])}",
                expected=expected_view, got=got_view,
            )
    return got_view


# --- internals ---------------------------------------------------------------------------------


def _exchange_all(serves: str, pid: int, requests: list[HttpCanaryRequest], wait_s: float) -> list[HttpExchange]:
    base_url, uds = _address(serves, pid)

    def run() -> list[HttpExchange]:
        transport = httpx.HTTPTransport(uds=uds) if uds else httpx.HTTPTransport()
        with httpx.Client(base_url=base_url, transport=transport, trust_env=False) as client:
            # the server binds and listens only once it was let go: the first request waits for it
            first = _exchange(client, requests[0], serves, connect_deadline=time.monotonic() + wait_s)
            return [first] + [_exchange(client, request, serves) for request in requests[1:]]

    return netns.run_in(pid, run)


def _exchange(client: httpx.Client, request: HttpCanaryRequest, serves: str,
              connect_deadline: float = 0.0) -> HttpExchange:
    while True:
        try:
            answer = client.request(request.method, request.path, timeout=request.timeout_s,
                                    json=request.body if request.method == "POST" else None)
            break
        except httpx.ConnectError as exc:  # nothing listens yet: the request never reached the server
            if time.monotonic() >= connect_deadline:
                raise WorkerError(f"the worker does not answer HTTP at {serves}: {exc}",
                                  hint="its log says why (it may have failed to bind, or still be starting)") from exc
            time.sleep(_RETRY_S)
        except httpx.HTTPError as exc:
            raise WorkerError(f"HTTP canary request {_what(request)} to {serves} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    try:
        payload: Any = answer.json()
    except ValueError:
        payload = answer.text
    return HttpExchange(request=request, status=answer.status_code, answer=_extract(payload, request.compare))


def _address(serves: str, pid: int) -> tuple[str, str | None]:
    """``(base_url, unix socket path or None)`` for a server that said it serves at ``serves``."""
    if serves.startswith("tcp://"):
        hostport = serves[len("tcp://"):]
        host, _, port = hostport.rpartition(":")
        host = host.strip("[]")
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        if not port.isdigit() or not host:
            raise ConfigError(FIELD, f"cannot tell where the worker serves from {serves!r}")
        return (f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"), None
    if serves.startswith("unix:@"):
        return "http://worker", "\0" + serves[len("unix:@"):]
    if serves.startswith("unix://"):
        path = f"{proc.path(pid, 'root')}{serves[len('unix://'):]}"  # the sandbox's own view of its files
        if len(path.encode()) > 107:
            raise ConfigError(FIELD, f"the worker's socket path is too long to connect to ({path})",
                              hint="unix socket paths are limited to 107 bytes")
        return "http://worker", path
    raise ConfigError(FIELD, f"cannot tell where the worker serves from {serves!r}",
                      hint="expected tcp://HOST:PORT, unix:///path or unix:@name")


def _extract(payload: Any, paths: list[str]) -> Any:
    if not paths:
        return payload
    return {path: _at(payload, path) for path in paths}


def _at(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return _MISSING
    return value


def _parts(exchange: HttpExchange) -> list[tuple[str, Any]]:
    if exchange.request.compare and isinstance(exchange.answer, dict):
        return list(exchange.answer.items())
    return []


def _view(exchange: HttpExchange) -> dict[str, Any]:
    return {"request": _what(exchange.request), "status": exchange.status, "answer": exchange.answer}


def _what(request: HttpCanaryRequest) -> str:
    return f"{request.method} {request.path}"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _short(value: Any, n: int = 200) -> str:
    text = value if isinstance(value, str) else _canonical(value)
    return text if len(text) <= n else text[:n] + "..."


def _brief(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors())
    return str(exc)
