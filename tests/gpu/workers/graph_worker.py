"""A torch GPU worker for thaw's GPU tests and benchmarks.

A real model (a stack of torch TransformerEncoder layers) with its forward pass captured as a
CUDA graph, optional filler GPU memory with known contents (to size the worker), and an optional
KV cache of many tensors allocated through ``thaw.memory.region("kv")`` that a second captured
graph reads. It parks in ``thaw.worker.quiesce()``; its canary is the digest of eager and graph
outputs, the filler checksum and the KV reduction, so thaw checks bit-identity at every restore.
After quiesce it serves JSON over HTTP on ``<control dir>/http.sock``:

    GET /infer        digests of eager and graph outputs, recomputed now
    GET /kvcheck?seed=N   refill the KV cache with a new pattern, replay its graph, compare with eager
    POST /park        stop serving and park again in quiesce() (for a second snapshot)

Options come from the environment: WORKER_FILLER_GIB, WORKER_KV_GIB, WORKER_KV_TENSORS,
WORKER_KV_PLAIN=1 (KV with plain torch allocations, never released), WORKER_HIDDEN, WORKER_LAYERS,
WORKER_EXTERNAL_SOCKET (connect a unix socket to this path before parking: CRIU cannot dump it).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

T0 = time.perf_counter()
import torch  # noqa: E402

import thaw.worker  # noqa: E402
from thaw.cuda import worker_hooks  # noqa: E402

ENV = os.environ
FILLER_GIB = float(ENV.get("WORKER_FILLER_GIB", "0"))
KV_GIB = float(ENV.get("WORKER_KV_GIB", "0"))
KV_TENSORS = int(ENV.get("WORKER_KV_TENSORS", "64"))
KV_PLAIN = ENV.get("WORKER_KV_PLAIN") == "1"
HIDDEN = int(ENV.get("WORKER_HIDDEN", "1024"))
LAYERS = int(ENV.get("WORKER_LAYERS", "4"))

dev = torch.device("cuda")
torch.manual_seed(1234)
phases: dict[str, float] = {"imports": time.perf_counter() - T0}

t = time.perf_counter()
layer = torch.nn.TransformerEncoderLayer(HIDDEN, nhead=16, dim_feedforward=4 * HIDDEN, batch_first=True)
model = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False).to(dev).eval()
static_x = torch.randn(8, 128, HIDDEN, device=dev)
filler = None
if FILLER_GIB > 0:
    filler = torch.randint(-(2**31), 2**31 - 1, (int(FILLER_GIB * 2**30) // 8,), dtype=torch.int64, device=dev)
phases["model"] = time.perf_counter() - t

kv: list[torch.Tensor] = []
kv_out = torch.zeros((), device=dev, dtype=torch.float32)


def fill_kv(seed: int) -> None:
    for i, tensor in enumerate(kv):
        # a cheap deterministic pattern that differs per tensor and seed
        tensor.copy_(torch.arange(tensor.numel(), device=dev, dtype=torch.float32).remainder(97 + i + seed)
                     .view_as(tensor).to(tensor.dtype))


def kv_reduce() -> torch.Tensor:
    return torch.stack([t.float().sum() for t in kv]).sum()


@thaw.worker.on_thaw(name="refill-kv")
def _refill(ctx: thaw.worker.HookContext) -> dict:
    # registered before the KV region exists, so it runs after thaw.memory re-acquired the cache
    if kv:
        fill_kv(0)
    return {}


t = time.perf_counter()
if KV_GIB > 0:
    per = int(KV_GIB * 2**30) // KV_TENSORS // 2
    if KV_PLAIN:
        kv = [torch.empty(per, dtype=torch.bfloat16, device=dev) for _ in range(KV_TENSORS)]
    else:
        import thaw.memory

        with thaw.memory.region("kv"):
            kv = [torch.empty(per, dtype=torch.bfloat16, device=dev) for _ in range(KV_TENSORS)]
    fill_kv(0)
phases["kv_alloc"] = time.perf_counter() - t

t = time.perf_counter()
with torch.no_grad():
    for _ in range(3):
        model(static_x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = model(static_x)
    kv_graph = None
    if kv:
        kv_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(kv_graph):
            kv_out.copy_(kv_reduce())
torch.cuda.synchronize()
phases["warmup_and_capture"] = time.perf_counter() - t
worker_hooks.install()


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().numpy().tobytes()).hexdigest()[:32]


def outputs() -> dict:
    with torch.no_grad():
        eager = model(static_x)
        graph.replay()
        torch.cuda.synchronize()
        out = {"eager": digest(eager), "graph": digest(static_y)}
        if filler is not None:
            out["filler"] = int(filler.sum().item())
        if kv_graph is not None:
            kv_graph.replay()
            torch.cuda.synchronize()
            out["kv"] = float(kv_out.item())
    return out


def kv_check(seed: int) -> dict:
    if kv_graph is None:
        return {"ok": False, "reason": "no kv cache"}
    fill_kv(seed)
    kv_graph.replay()
    torch.cuda.synchronize()
    eager = kv_reduce().item()
    return {"ok": float(kv_out.item()) == float(eager), "graph": float(kv_out.item()), "eager": float(eager)}


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
        url = urlparse(self.path)
        if url.path == "/infer":
            self._send(outputs())
        elif url.path == "/kvcheck":
            self._send(kv_check(int(parse_qs(url.query).get("seed", ["1"])[0])))
        elif url.path == "/health":
            self._send({"ok": True, "pid": os.getpid(), "phases": phases})
        else:
            self.send_error(404)

    def do_POST(self) -> None:  # noqa: N802
        if self.path == "/park":
            self._send({"parking": True})
            server.park = True
        else:
            self.send_error(404)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    park = False


external = None
if ENV.get("WORKER_EXTERNAL_SOCKET"):
    external = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    external.connect(ENV["WORKER_EXTERNAL_SOCKET"])

while True:
    outcome = thaw.worker.quiesce(name="graph-worker", canary=outputs)
    if outcome.stopped:
        raise SystemExit(0)
    print("quiesce returned", outcome.kind.value, json.dumps(outcome.info)[:300], flush=True)
    path = thaw.worker.control_dir() / "http.sock"
    if path.exists():
        path.unlink()
    server = Server(str(path), Handler)
    server.timeout = 0.05
    while not server.park:
        server.handle_request()
    server.server_close()
    path.unlink()
