"""The engine on a GPU: CUDA-graph decode, the KV cache in thaw.memory's pool, serving with graphs.

All marked ``gpu``: skipped where torch sees no CUDA device (conftest.py); run by
scripts/gpu-suite.sh on the GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_serving import start_server

from thaw.engine import canary
from thaw.engine.engine import Engine, Request, SamplingParams

pytestmark = pytest.mark.gpu


def gpu_engine(make_engine, dtype: torch.dtype, *, graphs: bool, **kw) -> Engine:  # type: ignore[no-untyped-def]
    engine = make_engine(device="cuda", dtype=dtype, **kw)
    if graphs:
        assert engine.capture_graphs([1, 2, 4, 8]) == 4 * len(engine.graphs.widths)
    return engine


def generate(engine: Engine, prompts: list[str], n: int) -> list[list[int]]:
    requests = [Request(engine.tokenizer.encode(p), SamplingParams(n, temperature=0, ignore_eos=True))
                for p in prompts]
    for r in requests:
        engine.add(r)
    while engine.has_work():
        engine.step()
    return [r.output for r in requests]


def test_graph_decode_logits_match_hf(tiny_weights: Path, make_engine) -> None:  # type: ignore[no-untyped-def]
    import transformers

    engine = gpu_engine(make_engine, torch.float32, graphs=True)
    ref = transformers.Qwen3ForCausalLM.from_pretrained(tiny_weights, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    seqs = [torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n)) for n in (30, 21)]
    with torch.no_grad():
        expected = [ref(s[None]).logits[0] for s in seqs]
    bs = engine.block_size
    tables = [engine.allocator.allocate(4), engine.allocator.allocate(4)]
    prefix = 12
    with torch.inference_mode():
        for s, table in zip(seqs, tables):
            pos = torch.arange(prefix)
            slots = torch.tensor(table)[pos // bs] * bs + pos % bs
            engine.model.prefill(s[:prefix].cuda(), pos.cuda(), slots.cuda(), engine.kv)
        for p in range(prefix, 21):
            rows = torch.tensor([[int(s[p]) for s in seqs], [p, p], [t[p // bs] * bs + p % bs for t in tables],
                                 [p + 1, p + 1]])
            shape = engine.graphs.shape_for(2, p // bs + 1)
            logits = engine.graphs.run(shape, rows, torch.tensor(tables)).cpu()
            for i in range(2):
                torch.testing.assert_close(logits[i], expected[i][p], atol=1e-4, rtol=0)


def test_graph_decode_gives_the_tokens_of_eager_decode(make_engine) -> None:  # type: ignore[no-untyped-def]
    prompts = [f"prompt {i} " * (i + 1) for i in range(6)]
    eager = generate(gpu_engine(make_engine, torch.float32, graphs=False), prompts, 20)
    graphed = gpu_engine(make_engine, torch.float32, graphs=True)
    assert generate(graphed, prompts, 20) == eager


def test_the_kv_cache_is_released_with_its_region_and_the_canary_survives(make_engine) -> None:  # type: ignore[no-untyped-def]
    import thaw.memory

    engine = gpu_engine(make_engine, torch.bfloat16, graphs=True, num_blocks=4096)
    stats = thaw.memory.stats()["kv"]
    assert stats["bytes"] >= engine.kv.nbytes
    engine.warm_up()
    before = canary.run(engine, "tiny")
    torch.cuda.synchronize()
    thaw.memory.set_poison(True)  # reacquired memory comes back as NaNs: the engine must not read stale slots
    try:
        released = thaw.memory.release("kv")
        assert released["bytes"] >= engine.kv.nbytes
        assert thaw.memory.stats()["kv"]["held_bytes"] == 0
        thaw.memory.reacquire("kv")
        engine.reset_cache()  # what the engine's thaw hook does
        # the captured graphs point at the same addresses, now backed by fresh memory
        assert canary.run(engine, "tiny") == before
    finally:
        thaw.memory.set_poison(False)


def test_serving_on_the_gpu_captures_graphs_before_quiesce(tiny_weights: Path) -> None:
    s = start_server(tiny_weights, "--device", "cuda", "--kv-gb", "0.25")
    try:
        health = s.http.get("/health").json()
        assert health["device"].startswith("cuda") and health["dtype"] == "bfloat16"
        phases = ["interpreter", "imports", "cuda_context", "weights", "kv", "graphs", "canary"]
        assert list(health["startup"]["phases"]) == phases
        assert health["startup"]["details"]["graphs"]["graphs"] >= 4
        body = s.complete(prompt=health["canary"]["prompts"][0], max_tokens=health["canary"]["max_tokens"],
                          temperature=0, ignore_eos=True, return_token_ids=True)
        assert body["choices"][0]["token_ids"] == health["canary"]["tokens"][0]
    finally:
        s.proc.terminate()
        assert s.proc.wait(60) == 0
