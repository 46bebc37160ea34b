"""A small torch GPU process for thaw.cuda's GPU tests; the test drives the driver checkpoint API on its pid.

It builds a bf16 matmul model, captures its forward pass as a CUDA graph, fills some
memory with known contents and, with CHILD_KV_MIB set, allocates a KV cache of many
tensors through ``thaw.memory.region("kv")`` that a second graph reads. Then it answers
one JSON line per command read from stdin (stdin/stdout are pipes to the test):

    check       digests of eager and graph outputs, the filler checksum, the KV reduction
    release     thaw.memory.release("kv")
    reacquire   thaw.memory.reacquire("kv"), then refill the cache with seed 2
    exit

Environment: CHILD_DEVICE (default 0), CHILD_FILLER_MIB (default 256), CHILD_KV_MIB (default 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback

import torch

from thaw.cuda.gpus import device_uuid

DEVICE = int(os.environ.get("CHILD_DEVICE", "0"))
FILLER_MIB = int(os.environ.get("CHILD_FILLER_MIB", "256"))
KV_MIB = int(os.environ.get("CHILD_KV_MIB", "0"))
KV_TENSORS = 16

torch.cuda.set_device(DEVICE)
dev = torch.device("cuda", DEVICE)
gen = torch.Generator(device=dev)
gen.manual_seed(1234)
weights = [torch.randn(1024, 1024, device=dev, dtype=torch.bfloat16, generator=gen) / 32 for _ in range(4)]
x_static = torch.randn(64, 1024, device=dev, dtype=torch.bfloat16, generator=gen)
filler = torch.randint(-(2**31), 2**31 - 1, ((FILLER_MIB << 20) // 8,), device=dev, dtype=torch.int64, generator=gen)


def model(x: torch.Tensor) -> torch.Tensor:
    for w in weights:
        x = torch.tanh(x @ w)
    return x


kv: list[torch.Tensor] = []
if KV_MIB:
    import thaw.memory

    per = (KV_MIB << 20) // KV_TENSORS // 2
    with thaw.memory.region("kv"):
        kv = [torch.empty(per, device=dev, dtype=torch.bfloat16) for _ in range(KV_TENSORS)]


def fill_kv(seed: int) -> None:
    for i, t in enumerate(kv):
        t.copy_(torch.arange(t.numel(), device=dev, dtype=torch.float32).remainder(31 + i + seed).to(t.dtype))


def kv_reduce() -> torch.Tensor:
    return torch.stack([t.float().sum() for t in kv]).sum()


fill_kv(1)
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    for _ in range(3):
        model(x_static)
        if kv:
            kv_reduce()
torch.cuda.current_stream().wait_stream(side)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    y_static = model(x_static)
kv_graph = None
kv_out = None
if kv:
    kv_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(kv_graph):
        kv_out = kv_reduce()
torch.cuda.synchronize()


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().view(torch.int16).cpu().numpy().tobytes()).hexdigest()[:32]


def outputs() -> dict:
    eager = model(x_static)
    graph.replay()
    torch.cuda.synchronize()
    out = {"eager": digest(eager), "graph": digest(y_static), "filler": int(filler.sum().item())}
    if kv_graph is not None:
        kv_graph.replay()
        torch.cuda.synchronize()
        out["kv_graph"] = float(kv_out.item())
        out["kv_eager"] = float(kv_reduce().item())
    return out


def identity() -> dict:
    return {"driver_uuid": device_uuid(DEVICE), "torch_uuid": str(torch.cuda.get_device_properties(DEVICE).uuid)}


def answer(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


answer({"ready": True, "pid": os.getpid(), "outputs": outputs(), **identity()})
for line in sys.stdin:
    command = line.strip()
    try:
        if command == "check":
            answer({"outputs": outputs(), **identity()})
        elif command == "release":
            answer({"released": thaw.memory.release("kv")})
        elif command == "reacquire":
            report = thaw.memory.reacquire("kv")
            fill_kv(2)
            answer({"reacquired": report})
        elif command == "exit":
            answer({"bye": True})
            break
        else:
            answer({"error": f"unknown command {command!r}"})
    except Exception as exc:  # noqa: BLE001 - report, keep serving: the test decides
        answer({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
