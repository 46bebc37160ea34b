"""The CUDA-graph runner's host side, on the CPU: shape buckets, padded rows, the null block.

A captured graph replays the decode step on fixed-shape static buffers. Here each
"graph" is an eager stand-in that recomputes that step from the same static buffers,
so everything but the capture itself — how a batch is padded into a bucket and read
back — runs on machines without a GPU (test_gpu.py covers real capture).
"""

from __future__ import annotations

import pytest
import torch

from thaw.engine.engine import Engine, Request, SamplingParams
from thaw.engine.graphs import DecodeGraphs


class EagerReplay:
    """Stands in for torch.cuda.CUDAGraph: replay() recomputes the step into the same output tensor."""

    def __init__(self, runner: DecodeGraphs, b: int, w: int) -> None:
        self.runner, self.b, self.w = runner, b, w
        self.out = runner._forward(b, w)
        self.replays = 0

    def replay(self) -> None:
        self.out.copy_(self.runner._forward(self.b, self.w))
        self.replays += 1


def with_eager_graphs(engine: Engine, batch_sizes: list[int], monkeypatch: pytest.MonkeyPatch) -> DecodeGraphs:
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    runner = DecodeGraphs(engine.model, engine.kv, batch_sizes=batch_sizes, max_blocks=engine.max_blocks)
    with torch.inference_mode():
        runner._pad(0, runner.max_batch)
        for b in runner.batch_sizes:
            for w in runner.widths:
                replay = EagerReplay(runner, b, w)
                runner.graphs[(b, w)] = (replay, replay.out)  # type: ignore[assignment]
    engine.graphs = runner
    return runner


def generate(engine: Engine, prompts: list[str], lengths: list[int]) -> list[list[int]]:
    requests = [Request(engine.tokenizer.encode(p), SamplingParams(n, temperature=0, ignore_eos=True))
                for p, n in zip(prompts, lengths)]
    for r in requests:
        engine.add(r)
    while engine.has_work():
        engine.step()
    return [r.output for r in requests]


def test_padded_bucketed_batches_decode_like_the_eager_path(make_engine, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # 3 requests run in the batch-4 bucket with a padded row; contexts cross from the 16- into the 32-block bucket
    prompts = ["x" * 200, "a shorter prompt", "y" * 240]
    lengths = [90, 40, 60]
    expected = generate(make_engine(), prompts, lengths)

    engine = make_engine(max_model_len=512)
    runner = with_eager_graphs(engine, [1, 2, 4], monkeypatch)
    assert runner.widths == [16, 32]
    assert generate(engine, prompts, lengths) == expected
    used = {shape for shape, (replay, _) in runner.graphs.items() if replay.replays}  # type: ignore[attr-defined]
    assert {(4, 16), (4, 32), (2, 32), (1, 32)} <= used
    assert engine.idle


def test_shapes_are_the_smallest_bucket_that_fits(make_engine, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    runner = with_eager_graphs(make_engine(max_model_len=1024), [1, 2, 4, 8], monkeypatch)
    assert runner.widths == [16, 32, 64]
    assert runner.shape_for(3, 1) == (4, 16)
    assert runner.shape_for(1, 17) == (1, 32)
    assert runner.shape_for(8, 64) == (8, 64)
    assert runner.shape_for(9, 1) is None  # more sequences than the largest graph: the engine decodes eagerly
