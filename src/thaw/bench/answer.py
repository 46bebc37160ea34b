"""Asking a worker for its first answer, over HTTP, as its clients would.

A worker opens its sockets only after ``quiesce()`` returned, so "first answer" is the first
2xx reply to the configured request: on the unix socket ``<control dir>/<socket>`` (the
reference engine and the demo serve ``http.sock`` there), or on a TCP port inside the
worker's own network namespace (every sandbox has its own loopback, which the host cannot
reach, so the request is sent from a thread inside that namespace). Until the deadline,
refused connections and non-2xx replies (a server still starting) are retried.

What is compared across copies is the reply's JSON, or the parts named by ``compare``
(dotted paths: ``choices.0.token_ids``), so that fields that differ by design (request ids,
timestamps) can be left out.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from thaw.bench.schema import Answer
from thaw.errors import AnswerTimeout, ConfigError, WorkerError

POLL_S = 0.005
#: sun_path of struct sockaddr_un holds 108 bytes, the last one a NUL (unix(7))
UNIX_PATH_MAX = 107
#: how often the poll asks whether the worker still lives (through an agent, that is a request each time)
ALIVE_EVERY_S = 0.25
#: a request for OpenAI-style completion servers (vLLM, SGLang, thaw's engine): greedy, so every copy agrees
OPENAI_PROMPT = "thaw: a snapshot restores in"
OPENAI_BODIES: dict[str, dict[str, Any]] = {
    "/v1/completions": {"prompt": OPENAI_PROMPT, "max_tokens": 8, "temperature": 0},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": OPENAI_PROMPT}], "max_tokens": 8,
                             "temperature": 0},
}


def http_answer(path: str, *, body: str | None = None, method: str | None = None, socket: str = "http.sock",
                port: int | None = None, compare: list[str] | None = None, timeout: float = 120.0) -> Answer:
    """The HTTP answer spec from the command line's flags; OpenAI completion paths get a greedy body by default."""
    if not path.startswith("/"):
        raise ConfigError("--answer-http", f"{path!r} is not a URL path", hint="e.g. /v1/completions or /health")
    parsed: Any = None
    if body is not None:
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise ConfigError("--answer-body", f"not JSON: {exc}") from None
    elif path in OPENAI_BODIES:
        parsed = OPENAI_BODIES[path]
    verb = (method or ("POST" if parsed is not None else "GET")).upper()
    if verb not in ("GET", "POST"):
        raise ConfigError("--answer-method", f"{method!r} is not GET or POST")
    if compare is None:
        compare = ["choices"] if path in OPENAI_BODIES else []
    if port is not None and not 0 < port < 65536:
        raise ConfigError("--answer-port", f"{port} is not a TCP port")
    if port is None and ("/" in socket or socket in ("", ".", "..")):
        raise ConfigError("--answer-socket", f"{socket!r} is not a file name in the worker's control directory")
    return Answer(kind="http", path=path, method=verb, body=parsed, socket=None if port else socket, port=port,
                  compare=compare, timeout=timeout)


@dataclass
class Reply:
    seconds: float  # from the first attempt until the reply
    status: int
    compared: str  # the canonical JSON of what copies must agree on


def ask(spec: Answer, *, control_dir: Path, pid: int, alive: Callable[[], bool]) -> Reply:
    """Send ``spec``'s request until the worker answers 2xx; AnswerTimeout (naming the last error) otherwise."""
    if spec.kind != "http" or spec.path is None:
        raise ValueError("ask() is for HTTP answers")
    if spec.port is not None:
        from thaw.sandbox.netns import run_in

        return run_in(pid, lambda: _poll(spec, f"http://127.0.0.1:{spec.port}", None, alive))
    sock = control_dir / (spec.socket or "http.sock")
    if len(os.fsencode(sock)) > UNIX_PATH_MAX:  # nobody can bind or reach it: say so, not "no answer"
        raise ConfigError("--answer-socket", f"{sock} is longer than the {UNIX_PATH_MAX} bytes a unix socket path "
                                             "may have", hint="use a shorter thaw home (THAW_HOME) or --name")
    return _poll(spec, "http://worker", httpx.HTTPTransport(uds=str(sock)), alive)


def _poll(spec: Answer, base: str, transport: httpx.HTTPTransport | None, alive: Callable[[], bool]) -> Reply:
    t0 = time.perf_counter()
    deadline = time.monotonic() + spec.timeout
    next_alive_check = time.monotonic() + ALIVE_EVERY_S
    last = "no attempt"
    kwargs: dict[str, Any] = {"json": spec.body} if spec.body is not None else {}
    with httpx.Client(base_url=base, transport=transport, timeout=spec.timeout) as client:
        while True:
            try:
                r = client.request(spec.method, spec.path or "/", **kwargs)
                if 200 <= r.status_code < 300:
                    return Reply(seconds=time.perf_counter() - t0, status=r.status_code,
                                 compared=compared_part(r.content, spec.compare))
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise AnswerTimeout(f"no answer to {spec.method} {spec.path} within {spec.timeout:.0f}s "
                                    f"(last: {last})", hint="is it the path the worker serves? (--answer-http)")
            if time.monotonic() >= next_alive_check:
                if not alive():
                    raise WorkerError(f"the worker exited before it answered {spec.method} {spec.path} "
                                      f"(last: {last})")
                next_alive_check = time.monotonic() + ALIVE_EVERY_S
            time.sleep(POLL_S)


def compared_part(content: bytes, paths: list[str]) -> str:
    """The canonical JSON of ``paths`` in a reply (all of it for []); a non-JSON reply is compared as text."""
    try:
        doc: Any = json.loads(content)
    except ValueError:
        return json.dumps(content.decode(errors="replace"))
    if not paths:
        return json.dumps(doc, sort_keys=True)
    return json.dumps({p: _at(doc, p) for p in paths}, sort_keys=True)


def _at(doc: Any, path: str) -> Any:
    node = doc
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return {"missing": path}  # compared like any value: a copy that lacks it differs from one that has it
    return node
