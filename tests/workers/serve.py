"""A small worker for thaw's tests: in-memory state, an open log file, an HTTP server opened after quiesce.

It warms up (generates random state it could not recompute), opens its log file,
parks in ``thaw.worker.quiesce()``, and once released or thawed serves HTTP on the unix
socket ``<control dir>/http.sock``:

    GET /state    {"token", "digest", "counter", "pid", "outcome", "info", "hooks", "log"}
    POST /incr    adds one to the counter, returns it
    POST /log     appends the request body as a line to the log file opened before quiesce
    POST /park    closes the server and parks in quiesce() again (to be snapshotted once more)
    POST /try-write   body: a path; {"written": true} if this process could open it for appending (and
                  create it), else {"written": false, "error": "EACCES"}; also its uid and capabilities

Behaviour switches (environment):

    TEST_NO_QUIESCE=1       never reach the quiesce point (warm up forever)
    TEST_THAW_FAIL=1        the thaw hook raises when the worker was restored
    TEST_THAW_SLEEP=S       the thaw hook sleeps S seconds when the worker was restored
    TEST_THAW_GATE=PATH     the thaw hook waits (up to 100 s) until PATH exists when the worker was restored
    TEST_FREEZE_FAIL=1      the freeze hook raises
    TEST_CANARY_RANDOM=1    the canary's answer differs on every run (a restore fails its canary check)
    TEST_HOLD_SOCKET=PATH   keep a unix socket connected to PATH (a server outside the sandbox) while parked
    TEST_HOLD_TCP=PORT      listen on TCP 127.0.0.1:PORT (in the sandbox's own network namespace) while parked
    TEST_HOLD_IO_URING=1    set up an io_uring (as uvloop's libuv does) and keep it while parked
    TEST_LOG=PATH           the log file [default: worker-data.log in the working directory]
    TEST_BALLAST_MB=N       hold N MiB more memory (a bigger image: CRIU takes longer to dump and restore it)
    TEST_TCP_PORT=N         serve on TCP port N of every address instead of the unix socket (a pod's worker)
    TEST_STALL_WHILE_FROZEN=S   while frozen, every look-up of the sandbox key stalls S seconds once it has the key
                            (a loaded machine, exaggerated): a dump then nearly always lands between the look-up
                            and the read of the control directory it leads to
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path

import thaw.worker

hooks_called: list[str] = []
frozen = False


@thaw.worker.on_freeze(name="state")
def freeze(ctx: thaw.worker.HookContext) -> dict:
    global frozen
    hooks_called.append(f"freeze:{ctx.reason}")
    frozen = True
    if os.environ.get("TEST_FREEZE_FAIL"):
        raise RuntimeError("freeze hook failed on purpose")
    return {"tokens": 1}


@thaw.worker.on_thaw(name="state")
def thaw_(ctx: thaw.worker.HookContext) -> None:
    global frozen
    hooks_called.append(f"thaw:{ctx.reason}")
    frozen = False
    if ctx.reason != "thaw":
        return
    if os.environ.get("TEST_THAW_SLEEP"):
        time.sleep(float(os.environ["TEST_THAW_SLEEP"]))
    if os.environ.get("TEST_THAW_GATE"):  # a restore held in flight until the test lets it finish
        gate, deadline = Path(os.environ["TEST_THAW_GATE"]), time.monotonic() + 100
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    if os.environ.get("TEST_THAW_FAIL"):
        raise RuntimeError("thaw hook failed on purpose")


def stall_while_frozen(seconds: float) -> None:
    from thaw.worker import protocol

    look_up = protocol.sandbox_key

    def stalled(init_pid: int | None = None) -> str:
        key = look_up(init_pid)
        if frozen:
            time.sleep(seconds)
        return key

    protocol.sandbox_key = stalled


def try_write(path: str) -> dict:
    status = {k: v for k, v in (line.split(":", 1) for line in open("/proc/self/status"))}
    facts = {"uid": status["Uid"].split()[0], "cap_eff": status["CapEff"].strip(),
             "cap_bnd": status["CapBnd"].strip(), "no_new_privs": status["NoNewPrivs"].strip()}
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        return {"written": True, **facts}
    except OSError as exc:
        import errno

        return {"written": False, "error": errno.errorcode.get(exc.errno, str(exc.errno)), **facts}


def canary(digest: str) -> dict:
    if os.environ.get("TEST_CANARY_RANDOM"):  # a worker whose answers change after a restore
        return {"digest": digest, "nonce": os.urandom(8).hex()}
    return {"digest": digest}


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    pass


def main() -> None:
    if os.environ.get("TEST_STALL_WHILE_FROZEN"):
        stall_while_frozen(float(os.environ["TEST_STALL_WHILE_FROZEN"]))
    if os.environ.get("TEST_NO_QUIESCE"):
        while True:
            time.sleep(1)
    # the warm-up: state that only this process's memory holds
    token = os.urandom(16).hex()
    table = [hashlib.sha256(f"{token}{i}".encode()).hexdigest() for i in range(20_000)]
    digest = hashlib.sha256("".join(table).encode()).hexdigest()
    ballast = bytearray(b"\x5a") * (int(os.environ.get("TEST_BALLAST_MB", "0")) << 20)  # noqa: F841 - held
    log = open(os.environ.get("TEST_LOG", "worker-data.log"), "a", buffering=1)  # noqa: SIM115 - open for life
    log.write(f"warm {token}\n")
    held = None
    if os.environ.get("TEST_HOLD_SOCKET"):
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held.connect(os.environ["TEST_HOLD_SOCKET"])
    if os.environ.get("TEST_HOLD_TCP"):
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.bind(("127.0.0.1", int(os.environ["TEST_HOLD_TCP"])))
        held.listen()
    ring = _io_uring() if os.environ.get("TEST_HOLD_IO_URING") else None  # noqa: F841 - held while parked

    while True:
        outcome = thaw.worker.quiesce(canary=lambda: canary(digest))
        if outcome.stopped:
            log.write("stopped\n")
            sys.exit(0)
        if held is not None:
            held.close()
            held = None
        if not serve(outcome, token, table, log):
            return


def serve(outcome: thaw.worker.Outcome, token: str, table: list[str], log) -> bool:
    """Serve until asked to park again (returns True)."""
    state = {"counter": 0, "park": False}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/state":
                return self.send_error(404)
            self.reply({
                "token": token,
                "digest": hashlib.sha256("".join(table).encode()).hexdigest(),
                "counter": state["counter"],
                "pid": os.getpid(),
                "outcome": outcome.kind.value,
                "info": outcome.info,
                "hooks": hooks_called,
                "log": log.name,
            })

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            if self.path == "/incr":
                state["counter"] += 1
                return self.reply({"counter": state["counter"]})
            if self.path == "/log":
                log.write(body + "\n")
                return self.reply({"ok": True})
            if self.path == "/try-write":
                return self.reply(try_write(body))
            if self.path == "/park":
                state["park"] = True
                self.reply({"ok": True})
                return threading.Thread(target=server.shutdown).start()
            self.send_error(404)

        def reply(self, obj: object) -> None:
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    if os.environ.get("TEST_TCP_PORT"):
        port = int(os.environ["TEST_TCP_PORT"])
        with http.server.ThreadingHTTPServer(("", port), Handler) as server:
            print(f"serving on port {port} ({outcome.kind.value})", flush=True)
            server.serve_forever()
        return state["park"]
    sock = thaw.worker.control_dir() / "http.sock" if outcome.managed else Path("http.sock")
    sock.unlink(missing_ok=True)
    # server_close() joins the request threads: no connection is left open when the worker parks again
    with UnixHTTPServer(str(sock), Handler) as server:
        print(f"serving on {sock} ({outcome.kind.value})", flush=True)
        server.serve_forever()
    sock.unlink(missing_ok=True)
    return state["park"]


def _io_uring() -> int:
    """A descriptor of a new io_uring with 8 entries (io_uring_setup, syscall 425 on x86-64)."""
    import ctypes

    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(425, 8, params)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "io_uring_setup")
    return fd


if __name__ == "__main__":
    main()

