"""The demo's worker: a semantic-search inference service whose warm-up is genuinely expensive.

Start-up does what real inference servers spend their cold start on: import torch, build a
transformer encoder, **compile** it (``torch.compile``: kernel generation and a C++ build, tens of
seconds on a small CPU), and embed a corpus into an in-memory index. Then it parks in
``thaw.worker.quiesce()`` with a canary (the top hits of fixed queries); only after that does it
open its HTTP socket (``<control dir>/http.sock``)::

    GET /search?q=TEXT&k=5   → {"hits": [[doc_id, score], ...], "pid": ...}
    GET /health              → start-up phases

Runs on the CPU; the corpus and weights are seeded, so every copy answers the same.
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

T0 = time.perf_counter()
import torch  # noqa: E402

import thaw.worker  # noqa: E402

SEQ, BATCH, DIM = 64, 64, 256
DOCS = int(os.environ.get("DEMO_DOCS", "4096"))
WORDS = ("gpu cold start restore snapshot checkpoint kernel graph cache weights tensor memory worker node "
         "cluster scale latency throughput batch token model serve quiesce thaw freeze driver image").split()
CANARY_QUERIES = ("restore a warm worker", "gpu kernel cache", "scale the cluster")
phases: dict[str, float] = {"imports": time.perf_counter() - T0}
torch.manual_seed(0)
torch.set_num_threads(1)


def encode(texts: list[str]) -> torch.Tensor:
    ids = torch.zeros(len(texts), SEQ, dtype=torch.long)
    for i, t in enumerate(texts):
        raw = t.encode()[:SEQ]
        ids[i, : len(raw)] = torch.tensor(list(raw), dtype=torch.long)
    return ids


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(256, DIM)
        self.pos = torch.nn.Parameter(torch.randn(SEQ, DIM) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(DIM, nhead=4, dim_feedforward=4 * DIM, batch_first=True)
        self.layers = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.embed(ids) + self.pos)
        return torch.nn.functional.normalize(h.mean(dim=1), dim=-1)


t = time.perf_counter()
model = Encoder().eval()
compiled = torch.compile(model, dynamic=False)  # the expensive part of this cold start
with torch.no_grad():
    compiled(encode([""] * BATCH))
phases["compile"] = time.perf_counter() - t


def embed(texts: list[str]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), BATCH):
            chunk = texts[i: i + BATCH]
            vecs = compiled(encode(chunk + [""] * (BATCH - len(chunk))))  # fixed shapes: no recompiles
            out.append(vecs[: len(chunk)])
    return torch.cat(out)


t = time.perf_counter()
gen = torch.Generator().manual_seed(1)
corpus = [" ".join(WORDS[j] for j in torch.randint(len(WORDS), (8,), generator=gen).tolist()) for _ in range(DOCS)]
index = embed(corpus)
phases["index"] = time.perf_counter() - t


def search(query: str, k: int = 5) -> list[list]:
    scores = index @ embed([query])[0]
    top = torch.topk(scores, k)
    return [[int(i), round(float(s), 5)] for s, i in zip(top.values, top.indices)]


def canary() -> dict:
    return {q: search(q) for q in CANARY_QUERIES}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if url.path == "/search":
            q = parse_qs(url.query)
            body = {"hits": search(q.get("q", [""])[0], int(q.get("k", ["5"])[0])), "pid": os.getpid()}
        elif url.path == "/health":
            body = {"ok": True, "phases": phases, "docs": DOCS}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


phases["total"] = time.perf_counter() - T0
print("demo worker warm:", json.dumps(phases), flush=True)
outcome = thaw.worker.quiesce(name="search", canary=canary)
if outcome.stopped:
    sys.exit(0)
print("quiesce returned", outcome.kind.value, flush=True)
control = thaw.worker.control_dir()
assert control is not None  # quiesce() returned thawed or released: this worker runs under thaw
sock = control / "http.sock"
sock.unlink(missing_ok=True)
server = Server(str(sock), Handler)
server.serve_forever()
