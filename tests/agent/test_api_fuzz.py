"""The agent's API fuzzed from its own OpenAPI schema (schemathesis): no request, however malformed, gets a 5xx,
and nothing is written outside thaw's home.

A real agent (``thaw agent serve`` over TCP with a token) answers; schemathesis generates
requests for every operation from the schema the agent publishes, valid and invalid. CI runs
``THAW_FUZZ_EXAMPLES`` (default 15) examples per operation; scripts/nightly.sh runs many more.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from workers import stop_everything, wait_until

pytestmark = pytest.mark.criu  # runs as root (launches are real sandboxes)

THAW = Path(sys.executable).with_name("thaw")
EXAMPLES = int(os.environ.get("THAW_FUZZ_EXAMPLES", "15"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("fuzz")
    home, token = root / "home", secrets.token_hex(16)
    (root / "tokens").write_text(f"fuzzer:{token}\n")
    (root / "tokens").chmod(0o600)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(THAW), "agent", "serve", "--no-socket", "--listen", f"127.0.0.1:{port}",
                             "--token-file", str(root / "tokens"), "--home", str(home)],
                            stdout=subprocess.DEVNULL, stderr=open(root / "agent.log", "wb"))  # noqa: SIM115
    auth = {"Authorization": f"Bearer {token}"}

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/healthz", headers=auth, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, 30, "the agent to answer")
    before = _outside(root)
    yield {"url": url, "auth": auth, "home": home, "root": root, "before": before, "proc": proc}
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    stop_everything(home)


def _outside(root: Path) -> set[str]:
    """Files under the test's directory that are not in thaw's home (the token file, the agent's log)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_relative_to(root / "home")}


@pytest.fixture(scope="module")
def operations(agent: dict) -> list:
    raw = httpx.get(f"{agent['url']}/openapi.json", headers=agent["auth"], timeout=10).json()
    return [result.ok() for result in schemathesis.openapi.from_dict(raw).get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(operations: list, agent: dict, mode: GenerationMode) -> None:
    """Valid requests (positive) and requests that break the schema (negative), for every operation."""
    errors: list[str] = []
    for op in operations:

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def call(case) -> None:
            response = case.call(base_url=agent["url"], headers=agent["auth"], timeout=60)
            if response.status_code >= 500:
                errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")
            elif response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error"} and body["error"]["reason"] and body["error"]["message"], body

        try:
            call()
        except Unsatisfiable:  # nothing of this operation can be made invalid (no parameters, no body)
            continue
    assert errors == []


def test_fuzzing_wrote_nothing_outside_thaws_home(agent: dict) -> None:
    assert agent["proc"].poll() is None, "the agent died"
    assert _outside(agent["root"]) == agent["before"]
    # thaw's home holds only its own directories
    assert {p.name for p in agent["home"].iterdir()} <= {"agent", "artifacts", "instances", "run", "staging"}


@pytest.mark.parametrize("body", [
    {"name": "a", "argv": ["no-such-command"]},
    {"name": "a", "argv": ["a\u0000b"]},
    {"name": "a", "argv": [""]},
    {"name": "a", "argv": ["true"], "env": {"A\u0000": "x"}},
    {"name": "a", "argv": ["true"], "env": {"A=B": "x"}},
    {"name": "a", "argv": ["true"], "env": {"": "x"}},
    {"name": "a", "argv": ["true"], "cwd": "/" + "x" * 5000},
], ids=["missing-command", "nul-in-argv", "empty-command", "nul-in-env", "equals-in-env-name", "empty-env-name",
        "long-cwd"])
def test_a_launch_the_kernel_cannot_execute_is_a_422_naming_what_is_wrong(agent: dict, body: dict) -> None:
    """Each of these was a 500 before (ValueError, OSError or WorkerError from deep inside the launch)."""
    response = httpx.post(f"{agent['url']}/v1/workers", json=body, headers=agent["auth"], timeout=60)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["reason"] == "invalid_request" and "bug in thaw" not in (error["hint"] or "")
