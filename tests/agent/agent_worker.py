"""The worker of the agent tests: warmed in-memory state, a canary, hooks that misbehave on request.

It warms up (random state it could not recompute), parks in ``thaw.worker.quiesce()``
with a canary over that state, and once released or thawed serves HTTP on the unix
socket ``<control dir>/http.sock``: ``GET /state`` → {"token", "digest", "outcome",
"hooks", "ballast"}.

Switches (environment):

    AGENT_TEST_FREEZE_SLEEP=S   the freeze hook sleeps S seconds (an agent can be killed meanwhile)
    AGENT_TEST_THAW_SLEEP=S     the thaw hook of a restored copy sleeps S seconds
    AGENT_TEST_PERTURB=1        the thaw hook of a restored copy changes the state: its canary then differs
    AGENT_TEST_BALLAST_MIB=N    N MiB of incompressible memory, so that dumping takes a while
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socketserver
import sys
import time

import thaw.worker

hooks_called: list[str] = []
state: dict[str, object] = {}


@thaw.worker.on_freeze(name="agent-test")
def freeze(ctx: thaw.worker.HookContext) -> dict:
    hooks_called.append(f"freeze:{ctx.reason}")
    time.sleep(float(os.environ.get("AGENT_TEST_FREEZE_SLEEP", "0")))
    return {}


@thaw.worker.on_thaw(name="agent-test")
def thaw_(ctx: thaw.worker.HookContext) -> None:
    hooks_called.append(f"thaw:{ctx.reason}")
    if ctx.reason != "thaw":
        return
    time.sleep(float(os.environ.get("AGENT_TEST_THAW_SLEEP", "0")))
    if os.environ.get("AGENT_TEST_PERTURB"):
        state["token"] = "perturbed-" + str(state["token"])  # a restore that did not bring the state back


def digest() -> str:
    return hashlib.sha256(str(state["token"]).encode()).hexdigest()


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> None:
    state["token"] = os.urandom(16).hex()
    mib = int(os.environ.get("AGENT_TEST_BALLAST_MIB", "0"))
    ballast = bytearray(os.urandom(1 << 20)) * mib if mib else bytearray()
    outcome = thaw.worker.quiesce(canary=lambda: {"digest": digest()})
    if outcome.stopped:
        sys.exit(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"token": state["token"], "digest": digest(), "outcome": outcome.kind.value,
                               "hooks": hooks_called, "ballast": len(ballast)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    sock = thaw.worker.control_dir() / "http.sock"
    sock.unlink(missing_ok=True)
    with Server(str(sock), Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
