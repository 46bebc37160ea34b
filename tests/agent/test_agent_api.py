"""The agent's HTTP API as a client sees it: authentication, malformed requests, names, errors.

A real agent process, on its unix socket and on TCP; no CRIU needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from thaw.api.client import AgentClient
from thaw.errors import AgentError
from thaw.store.testing import free_port

TOKEN = "s3cr3t-token-for-tests-0123456789"


@pytest.fixture
def tcp_node(make_node, tmp_path):
    port = free_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may call over TCP\nci-operator:{TOKEN}\n")
    node = make_node("api", namespaced=False, args=["--listen", f"127.0.0.1:{port}", "--token-file", str(tokens)])
    node.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return node


@pytest.fixture
def tcp_without_token(make_node):
    port = free_port()
    node = make_node("open", namespaced=False, args=["--listen", f"127.0.0.1:{port}"])
    node.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return node


def _audit(node) -> list[dict]:
    path = node.root / "agent" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_tcp_without_a_configured_token_rejects_everything(tcp_without_token):
    url = tcp_without_token.url
    for method, path, body in [("GET", "/v1/status", None), ("GET", "/metrics", None), ("GET", "/healthz", None),
                               ("POST", "/v1/snapshots", {"worker": "w", "artifact": "a"}),
                               ("POST", "/v1/snapshots", "not json"), ("GET", "/no/such/route", None)]:
        r = httpx.request(method, url + path, content=json.dumps(body) if body else None,
                          headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["reason"] == "unauthorized"
        assert "no token is configured" in r.json()["error"]["message"]
    with tcp_without_token.client() as c:  # the unix socket still works
        assert c.status().node == "open"


def test_tcp_needs_the_right_bearer_token(tcp_node):
    url = tcp_node.url
    r = httpx.get(url + "/v1/status")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    r = httpx.get(url + "/v1/status", headers={"Authorization": "Bearer wrong-token-wrong-token"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "missing or invalid bearer token"
    # malformed AND unauthenticated: 401, the body is never looked at
    r = httpx.post(url + "/v1/snapshots", content=b"{not json")
    assert r.status_code == 401

    with AgentClient(base_url=url, token=TOKEN) as c:
        assert c.status().node == "api"
        assert "thaw_requests_rejected_total" in c.metrics()
    entries = _audit(tcp_node)
    assert any(e["outcome"] == "rejected" and e["reason"] == "unauthorized" for e in entries)


def test_malformed_requests_get_422_with_a_clear_body(tcp_node):
    with httpx.Client(base_url=tcp_node.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        r = http.post("/v1/snapshots", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["reason"] == "invalid_request" and err["message"].startswith("invalid request:")

        r = http.post("/v1/snapshots", json={"worker": "w1"})
        assert r.status_code == 422
        assert [f["field"] for f in r.json()["error"]["fields"]] == ["body.artifact"]
        assert "body.artifact: Field required" in r.json()["error"]["message"]

        r = http.post("/v1/snapshots", json={"worker": "w1", "artifact": "a", "leave_runing": True})
        assert r.status_code == 422 and "leave_runing" in r.json()["error"]["message"]

        r = http.post("/v1/restores", json={"artifact": "a", "verify_canary": "perhaps"})
        assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "body.verify_canary"

        r = http.post("/v1/workers", json={"name": "w", "argv": []})
        assert r.status_code == 422 and "argv" in r.json()["error"]["message"]

        r = http.get("/v1/jobs/x", params={"wait": "forever"})
        assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "query.wait"


@pytest.mark.parametrize("bad", ["../etc", "a/b", "x..y", "/abs", "UPPER", ".hidden", ""])
def test_names_with_dotdot_or_slash_are_rejected(tcp_node, bad):
    with httpx.Client(base_url=tcp_node.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for path, body in [("/v1/snapshots", {"worker": "w1", "artifact": bad}),
                           ("/v1/snapshots", {"worker": bad, "artifact": "a"}),
                           ("/v1/restores", {"artifact": bad}),
                           ("/v1/restores", {"artifact": "a", "name": bad}),
                           ("/v1/workers", {"name": bad, "argv": ["/bin/true"]})]:
            r = http.post(path, json=body)
            assert r.status_code == 422, (path, body, r.text)
            assert "is not a valid name" in r.json()["error"]["message"]
        if bad:
            quoted = bad.replace("/", "%2F")
            for method, path in [("GET", f"/v1/artifacts/{quoted}"), ("DELETE", f"/v1/artifacts/{quoted}"),
                                 ("POST", f"/v1/artifacts/{quoted}/verify"), ("GET", f"/v1/workers/{quoted}")]:
                r = http.request(method, path)
                assert r.status_code == 422, (method, path, r.text)
                assert r.json()["error"]["reason"] == "invalid_request"


def test_unknown_things_are_404_with_a_body(tcp_node):
    with AgentClient(base_url=tcp_node.url, token=TOKEN) as c:
        for call, what in [(lambda: c.job("0123456789abcdef"), "no job"),
                           (lambda: c.snapshot("ghost", "a1"), "no worker named 'ghost'"),
                           (lambda: c.restore("ghost-artifact"), "no artifact named 'ghost-artifact'"),
                           (lambda: c.artifact("ghost-artifact"), "no artifact"),
                           (lambda: c.delete("ghost-artifact"), "no artifact")]:
            with pytest.raises(AgentError) as info:
                call()
            assert info.value.status == 404 and info.value.reason == "not_found" and what in info.value.message
        r = httpx.get(tcp_node.url + "/v2/nothing", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 404 and r.json()["error"]["message"] == "no route GET /v2/nothing"


def test_unix_socket_callers_are_identified_by_the_kernel(tcp_node):
    with tcp_node.client() as c:
        with pytest.raises(AgentError):
            c.snapshot("ghost", "a1")
        assert c.artifacts() == [] and c.workers() == [] and c.jobs() == []
    # the client checks names itself before any round trip
    with tcp_node.client() as c, pytest.raises(Exception, match="not a valid name"):
        c.snapshot("w1", "../etc")


def test_socket_is_private_and_cli_status_works(tcp_node):
    mode = tcp_node.socket.stat().st_mode & 0o777
    assert mode == 0o600
    out = subprocess.run([sys.executable, "-m", "thaw", "agent", "status", "--socket", str(tcp_node.socket), "--json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"]["node"] == "api"
    out = subprocess.run([sys.executable, "-m", "thaw", "agent", "status", "--socket", str(tcp_node.root / "nope.sock")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1 and "no thaw agent answers" in out.stderr and "Traceback" not in out.stderr


def test_a_restore_pinned_to_a_digest_is_refused_at_once_when_the_artifact_differs(tcp_node):
    from thaw.store import DirectoryStore
    from thaw.model.manifest import Manifest, SourceInfo, WorkerInfo

    store = DirectoryStore(tcp_node.store)
    with store.stage("a1") as staged:
        (staged.dir / "images").mkdir()
        (staged.dir / "images" / "core-1.img").write_bytes(b"core")
        staged.published = Manifest(artifact_id="", name="a1", source=SourceInfo(host="h", kernel="k"),
                                    worker=WorkerInfo(name="w"))
    other = "sha256:" + "0" * 64
    with AgentClient(base_url=tcp_node.url, token=TOKEN) as c:
        with pytest.raises(AgentError) as info:
            c.restore("a1", digest=other)
        assert info.value.status == 409 and info.value.reason == "untrusted"
        assert f"not the expected {other}" in info.value.message
        assert c.jobs() == [], "refused before a job was made"
    with httpx.Client(base_url=tcp_node.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        r = http.post("/v1/restores", json={"artifact": "a1", "digest": "xxh3_128:00"})
        assert r.status_code == 422 and "is not an artifact digest" in r.json()["error"]["message"]


def test_a_flood_of_unauthenticated_requests_barely_grows_the_audit_log(tcp_node):
    """Before: each refused request was one audit record written with fsync (+17 MiB in 5 s of junk)."""
    audit = tcp_node.root / "agent" / "audit.log"
    before = audit.stat().st_size if audit.exists() else 0
    junk = b"x" * 2000
    started = time.monotonic()
    with httpx.Client(base_url=tcp_node.url) as http:  # one connection: as fast as a client can send
        for i in range(1500):
            r = http.post(f"/v1/snapshots/{'a' * 500}{i}", content=junk, headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401
    # one record a minute: on a loaded machine the flood may outlast the first minute
    allowed = 1 + int((time.monotonic() - started) // 60)

    grown = audit.stat().st_size - before
    assert grown < 2000 * allowed, f"the audit log grew by {grown} bytes"
    refused = [e for e in _audit(tcp_node) if e["outcome"] == "rejected"]
    assert 1 <= len(refused) <= allowed and "(1 refused from 127.0.0.1" in refused[0]["message"]
    with AgentClient(base_url=tcp_node.url, token=TOKEN) as c:  # every one is counted all the same
        assert 'thaw_requests_rejected_total{reason="unauthorized"} 1500.0' in c.metrics()


def test_a_body_larger_than_the_limit_is_refused_unread(tcp_node):
    with httpx.Client(base_url=tcp_node.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        big = b'{"worker": "w", "artifact": "a", "x": "' + b"y" * (2 << 20) + b'"}'
        r = http.post("/v1/snapshots", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["reason"] == "too_large"

        def chunks():  # no Content-Length: the limit holds for a streamed body too
            for _ in range(40):
                yield b"y" * (64 << 10)

        r = http.post("/v1/snapshots", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert http.get("/v1/status").status_code == 200  # and the agent goes on


def test_a_read_only_token_may_look_but_not_change_anything(make_node, tmp_path):
    port = free_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ci-operator:{TOKEN}\nprometheus@read:{'r' * 32}\n")
    node = make_node("scoped", namespaced=False, args=["--listen", f"127.0.0.1:{port}", "--token-file", str(tokens)])
    url = f"http://127.0.0.1:{port}"
    reader = {"Authorization": f"Bearer {'r' * 32}"}

    for path in ("/v1/status", "/metrics", "/v1/workers", "/v1/jobs", "/v1/artifacts"):
        assert httpx.get(url + path, headers=reader).status_code == 200, path
    for method, path in (("POST", "/v1/snapshots"), ("POST", "/v1/restores"), ("POST", "/v1/workers"),
                         ("DELETE", "/v1/workers/w"), ("DELETE", "/v1/artifacts/a"), ("POST", "/v1/artifacts/a/verify")):
        r = httpx.request(method, url + path, json={"worker": "w", "artifact": "a"}, headers=reader)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["reason"] == "forbidden" and "'prometheus' may only read" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/snapshots", json={"worker": "w", "artifact": "a"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404  # the operate token gets through to the route (no such worker)
    assert node  # the agent on its socket is unaffected
