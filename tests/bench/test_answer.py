"""First answers over HTTP: which part of a reply is compared, how the request is formed, how long it is asked."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from thaw.bench.answer import ask, compared_part, http_answer
from thaw.errors import AnswerTimeout, ConfigError, WorkerError


def test_compared_parts_of_a_reply() -> None:
    reply = json.dumps({"id": "cmpl-1", "created": 5, "choices": [{"text": "hi", "token_ids": [1, 2]}]}).encode()
    assert json.loads(compared_part(reply, ["choices.0.token_ids"])) == {"choices.0.token_ids": [1, 2]}
    assert json.loads(compared_part(reply, [])) == json.loads(reply)  # all of it
    assert json.loads(compared_part(reply, ["choices.3.text"])) == {"choices.3.text": {"missing": "choices.3.text"}}
    assert compared_part(b"plain text", ["x"]) == json.dumps("plain text")


def test_openai_paths_get_a_greedy_request_and_compare_the_choices() -> None:
    spec = http_answer("/v1/completions")
    assert spec.method == "POST" and spec.body["temperature"] == 0 and spec.compare == ["choices"]
    assert http_answer("/health").method == "GET" and http_answer("/health").compare == []
    assert http_answer("/x", body='{"a": 1}').method == "POST"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"path": "health"}, "is not a URL path"),
    ({"path": "/x", "body": "{nope"}, "--answer-body: not JSON"),
    ({"path": "/x", "method": "PUT"}, "is not GET or POST"),
    ({"path": "/x", "port": 70000}, "is not a TCP port"),
    ({"path": "/x", "socket": "../elsewhere.sock"}, "is not a file name"),
])
def test_bad_answer_flags_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        http_answer(**kwargs)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve(sock: Path, statuses: list[int]) -> _Server:
    """A unix-socket HTTP server answering with ``statuses`` in turn (the last one for ever)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            body = json.dumps({"status": status}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = _Server(str(sock), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_ask_retries_until_the_socket_serves_a_2xx(tmp_path: Path) -> None:
    spec = http_answer("/state")
    statuses = [503, 503, 200]
    threading.Timer(0.2, lambda: _serve(tmp_path / "http.sock", statuses)).start()  # opens late, starts with 503s
    reply = ask(spec, control_dir=tmp_path, pid=0, alive=lambda: True)
    assert reply.status == 200 and json.loads(reply.compared) == {"status": 200}
    assert statuses == [200]  # both 503s were asked through, then the 200 answered


def test_ask_gives_up_when_the_worker_dies_or_the_deadline_passes(tmp_path: Path) -> None:
    with pytest.raises(WorkerError, match="exited before it answered"):
        ask(http_answer("/state"), control_dir=tmp_path, pid=0, alive=lambda: False)
    server = _serve(tmp_path / "http.sock", [500])
    try:
        t0 = time.monotonic()
        with pytest.raises(AnswerTimeout, match="last: HTTP 500"):
            ask(http_answer("/state", timeout=0.5), control_dir=tmp_path, pid=0, alive=lambda: True)
        assert time.monotonic() - t0 < 5
    finally:
        server.shutdown()


def test_a_socket_path_too_long_to_exist_is_named(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(ConfigError, match="longer than the 107 bytes"):
        ask(http_answer("/state"), control_dir=deep, pid=0, alive=lambda: True)
