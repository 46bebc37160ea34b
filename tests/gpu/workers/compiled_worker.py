"""A torch.compile'd GPU worker (mode="reduce-overhead": CUDA graphs) with inductor's compile-worker pool, for
issue 16's GPU tests: the pool's processes map /dev/nvidia* without CUDA state, so thaw must shut them down (the
torch freeze hook) or refuse them; with WORKER_GPU_CHILD=1 a child process holds CUDA state of its own, so thaw
must lock and checkpoint both processes. It parks in thaw.worker.quiesce(); afterwards it serves JSON on
``<control dir>/http.sock``::

    GET  /infer     digests of the compiled model's output (replayed CUDA graphs) and the child's tensor
    GET  /tree      pids, and which processes of the tree are inductor compile workers
    POST /compile   compile something new (a new shape): inductor starts a new compile pool
    POST /park      stop serving and park again

Environment: WORKER_GPU_CHILD=1, WORKER_NO_HOOKS=1 (do not install thaw's torch hooks: the pool stays),
TORCHINDUCTOR_COMPILE_THREADS (the pool's size; the test sets it so the pool exists on any machine).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import socketserver
from http.server import BaseHTTPRequestHandler

import torch

import thaw.worker
from thaw.cuda import worker_hooks

HIDDEN = 1024


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().numpy().tobytes()).hexdigest()[:32]


def gpu_child(conn) -> None:  # a second process with CUDA state of its own (a tensor-parallel rank, an engine core)
    torch.manual_seed(7)
    held = torch.randn(4096, 1024, device="cuda")
    conn.send("ready")
    while conn.recv() == "digest":
        conn.send(digest(held * 2))


def compile_workers() -> list[dict]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            maps = open(f"/proc/{pid}/maps").read()
        except OSError:
            continue
        if "torch/_inductor/compile_worker" in cmd and int(pid) != os.getpid():
            found.append({"pid": int(pid), "maps_gpu": "/dev/nvidia" in maps})
    return found


def main() -> None:
    torch.manual_seed(1234)
    dev = torch.device("cuda")
    model = torch.nn.Sequential(
        torch.nn.Linear(HIDDEN, 4 * HIDDEN), torch.nn.GELU(), torch.nn.Linear(4 * HIDDEN, HIDDEN), torch.nn.LayerNorm(HIDDEN),
    ).to(dev).eval()
    compiled = torch.compile(model, mode="reduce-overhead")
    x = torch.randn(64, HIDDEN, device=dev)
    with torch.no_grad():
        for _ in range(4):  # warm-up, then CUDA graph capture and replays
            compiled(x)
    torch.cuda.synchronize()

    child = None
    if os.environ.get("WORKER_GPU_CHILD") == "1":
        ctx = multiprocessing.get_context("spawn")
        conn, child_end = ctx.Pipe()
        child = ctx.Process(target=gpu_child, args=(child_end,), daemon=True)
        child.start()
        assert conn.recv() == "ready"
    if os.environ.get("WORKER_NO_HOOKS") != "1":
        worker_hooks.install()

    def outputs() -> dict:
        with torch.no_grad():
            out = {"compiled": digest(compiled(x).clone()), "eager": digest(model(x))}
        if child is not None:
            conn.send("digest")
            out["child"] = conn.recv()
        return out

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/infer":
                self._send(outputs())
            elif self.path == "/tree":
                self._send({"pid": os.getpid(), "child": child.pid if child else None,
                            "compile_workers": compile_workers()})
            else:
                self.send_error(404)

        def do_POST(self) -> None:  # noqa: N802
            if self.path == "/compile":
                y = torch.randn(48, 3 * HIDDEN, device=dev)
                fresh = torch.compile(lambda t: torch.nn.functional.silu(t) * 3 + 1)
                same = torch.allclose(fresh(y), torch.nn.functional.silu(y) * 3 + 1)
                self._send({"ok": bool(same), "compile_workers": compile_workers()})
            elif self.path == "/park":
                self._send({"parking": True})
                server.park = True
            else:
                self.send_error(404)

    class Server(socketserver.UnixStreamServer):
        park = False

    while True:
        outcome = thaw.worker.quiesce(name="compiled-worker", canary=outputs)
        if outcome.stopped:
            raise SystemExit(0)
        path = thaw.worker.control_dir() / "http.sock"
        path.unlink(missing_ok=True)
        server = Server(str(path), Handler)
        server.timeout = 0.05
        while not server.park:  # one thread serves: torch.compile's CUDA graphs are per thread
            server.handle_request()
        server.server_close()
        path.unlink()


if __name__ == "__main__":
    main()
