"""The HTTP canary: parsing a requests file (untrusted input), and recording and replaying against a real HTTP
server that lives in a network namespace of its own, reached the way thaw reaches a sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from thaw.agent.models import SnapshotRequest
from thaw.errors import CanaryMismatch, CheckpointError, ConfigError
from thaw.pipeline import http_canary
from thaw.store.manifest import HttpCanaryRequest
from workers import wait_until

# an OpenAI-ish server: its answers depend on ANSWER_FILE, like a model on its weights; ids and times never repeat
SERVER = textwrap.dedent("""
    import http.server, json, os, sys, time, uuid
    from thaw.sandbox.init import loopback_up
    loopback_up()
    answer_file = sys.argv[1]

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/completions":
                return self.reply(404, {"error": "no such route"})
            text = open(answer_file).read() + ":" + req["prompt"] + ":" + str(req["temperature"])
            self.reply(200, {"id": uuid.uuid4().hex, "created": time.time(), "choices": [{"text": text}]})

        def do_GET(self):
            self.reply(200, {"ok": True, "now": time.time()})

    http.server.HTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
""")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(pid, answer file) of the server above, alone in a new network namespace (root needed, as for thaw)."""
    answer = tmp_path / "answer"
    answer.write_text("A")
    proc = subprocess.Popen(["unshare", "--net", sys.executable, "-c", SERVER, str(answer)])
    ours = os.readlink("/proc/self/ns/net")
    try:
        # until unshare(2) ran, the child is still in our namespace
        wait_until(lambda: os.readlink(f"/proc/{proc.pid}/ns/net") != ours, 10, "the server's own network namespace")
        yield proc.pid, answer
    finally:
        proc.kill()
        proc.wait(10)


REQUESTS = """
# OpenAI-style lines get temperature 0 and compare the choices
{"prompt": "one", "max_tokens": 4}
{"method": "GET", "path": "/health", "compare": ["ok"]}
"""


@pytest.mark.criu  # root, for the network namespace
def test_a_copy_that_answers_alike_passes_and_one_that_does_not_is_named(server) -> None:
    pid, answer = server
    requests = http_canary.parse(REQUESTS)
    recorded = http_canary.record("tcp://0.0.0.0:8000", pid, requests, wait_s=30)
    assert recorded.exchanges[0].answer == {"choices": [{"text": "A:one:0"}]}, "temperature 0 was sent"
    assert recorded.exchanges[1].answer == {"ok": True}
    assert len(http_canary.check(recorded, pid)) == 2, "the same server answers alike (ids and times ignored)"

    answer.write_text("B")
    with pytest.raises(CanaryMismatch) as mismatch:
        http_canary.check(recorded, pid, who="copy x")
    assert "copy x answers its HTTP canary differently: request 1 (POST /v1/completions)" in str(mismatch.value)
    assert mismatch.value.got[0]["answer"] == {"choices": [{"text": "B:one:0"}]}


@pytest.mark.criu
def test_recording_refuses_answers_that_are_errors_or_lack_what_is_compared(server) -> None:
    pid, _ = server
    with pytest.raises(CheckpointError, match="got HTTP 404 from the original"):
        http_canary.record("tcp://0.0.0.0:8000", pid, [HttpCanaryRequest(path="/v1/nothing", body={})], wait_s=30)
    with pytest.raises(CheckpointError, match="has no choices.0.logprobs"):
        http_canary.record("tcp://0.0.0.0:8000", pid,
                           [HttpCanaryRequest.of({"prompt": "x", "compare": ["choices.0.logprobs"]})], wait_s=30)


@pytest.mark.criu
def test_a_server_that_never_listens_is_a_clear_error(server) -> None:
    pid, _ = server
    from thaw.errors import WorkerError

    with pytest.raises(WorkerError, match="does not answer HTTP at tcp://127.0.0.1:9"):
        http_canary.record("tcp://127.0.0.1:9", pid, http_canary.parse('{"prompt": "x"}'), wait_s=0.5)


def test_openai_style_lines_become_requests() -> None:
    [completion, chat] = http_canary.parse('{"prompt": "hi"}\n{"messages": [{"role": "user", "content": "hi"}],'
                                           ' "temperature": 0.5, "timeout_s": 5}')
    assert (completion.method, completion.path, completion.compare) == ("POST", "/v1/completions", ["choices"])
    assert completion.body == {"prompt": "hi", "temperature": 0}
    assert chat.path == "/v1/chat/completions" and chat.body["temperature"] == 0.5 and chat.timeout_s == 5


@pytest.mark.parametrize("text, message", [
    ("{", "line 1 of the canary requests is not JSON"),
    ('\n\n["a"]', "line 3 of the canary requests must be a JSON object"),
    ('{"hello": 1}', 'needs "path"'),
    ('{"path": "no-slash"}', "path: String should match pattern"),
    ('{"path": "/x", "colour": 1}', "colour: Extra inputs are not permitted"),
    ("# only a comment\n", "hold no request"),
    ('{"path": "/x"}\n' * 65, "at most 64"),
])
def test_a_bad_requests_file_is_refused_naming_the_line(text, message) -> None:
    with pytest.raises(ConfigError, match=message):
        http_canary.parse(text)


def test_the_agent_api_takes_the_same_requests() -> None:
    req = SnapshotRequest(worker="w", artifact="a", canary_http=[{"prompt": "hi"}, {"method": "GET", "path": "/"}])
    assert [r.path for r in req.canary_http] == ["/v1/completions", "/"]
    assert SnapshotRequest.model_validate_json(req.model_dump_json()) == req, "it survives the wire"


@pytest.mark.parametrize("serves, expected", [
    ("tcp://0.0.0.0:8000", ("http://127.0.0.1:8000", None)),
    ("tcp://[::]:8000", ("http://[::1]:8000", None)),
    ("tcp://127.0.0.1:9000", ("http://127.0.0.1:9000", None)),
    ("unix:///run/app.sock", ("http://worker", "/proc/42/root/run/app.sock")),
    ("unix:@engine", ("http://worker", "\0engine")),
])
def test_where_thaw_connects_for_a_server_address(serves, expected) -> None:
    assert http_canary._address(serves, 42) == expected


@pytest.mark.criu
def test_a_worker_that_did_not_say_where_it_serves_is_refused_before_the_freeze(settings, store, launch_worker) -> None:
    from thaw import pipeline
    from workers import state

    original = launch_worker()  # an SDK worker that serves on a unix socket it never named
    with pytest.raises(ConfigError, match="did not say where it serves"):
        pipeline.snapshot(settings, "w", "a1", store=store, canary_http=http_canary.parse('{"prompt": "x"}'))
    assert store.list() == []
    pipeline.release(settings, "w")
    assert state(original.dir)["hooks"] == [], "never frozen"
