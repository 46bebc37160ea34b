"""The engine core: continuous batching, KV-cache accounting, sampling, the canary."""

from __future__ import annotations

import pytest
import torch

from thaw.engine import canary
from thaw.engine.engine import Engine, Request, SamplingParams
from thaw.engine.tokenizer import EOS
from thaw.errors import ConfigError

PROMPTS = ["Hello, world", "The quick brown fox jumps", "0123456789", "snapshot and restore",
           "a", "KV caches are paged", "€ and ü are two bytes or more", "last one"]


def greedy(n: int, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, **kw)  # type: ignore[arg-type]


def run_alone(engine: Engine, prompt: str, params: SamplingParams) -> list[int]:
    r = Request(engine.tokenizer.encode(prompt), params)
    engine.add(r)
    while engine.has_work():
        engine.step()
    return r.output


def drain(engine: Engine, max_steps: int = 10_000) -> None:
    for _ in range(max_steps):
        if not engine.has_work():
            return
        engine.step()
    raise AssertionError("the engine did not finish its requests")


def test_concurrent_requests_get_the_tokens_they_would_get_alone(make_engine) -> None:  # type: ignore[no-untyped-def]
    lengths = [12, 5, 20, 9, 1, 16, 7, 3]
    alone = [run_alone(make_engine(), p, greedy(n)) for p, n in zip(PROMPTS, lengths)]

    engine = make_engine(max_batch=4)
    requests = [Request(engine.tokenizer.encode(p), greedy(n)) for p, n in zip(PROMPTS, lengths)]
    batch_sizes = []
    for r in requests[:5]:
        engine.add(r)
    engine.step()
    for r in requests[5:]:  # arrive while the first ones are being decoded
        engine.add(r)
    while engine.has_work():
        engine.step()
        batch_sizes.append(engine.last_step.decoded)

    assert max(batch_sizes) == 4  # they really were decoded together, at most max_batch at once
    assert [r.output for r in requests] == alone
    assert [len(r.output) for r in requests] == lengths
    assert all(r.finish_reason == "length" for r in requests)


def test_every_block_is_free_again_after_the_requests_finish_or_abort(engine: Engine) -> None:
    free = engine.allocator.free
    kept = Request(engine.tokenizer.encode("abort me"), greedy(50))
    done = Request(engine.tokenizer.encode("finish me"), greedy(4))
    engine.add(kept)
    engine.add(done)
    engine.step()
    assert engine.allocator.free < free
    out = engine.abort(kept.id)
    assert out is not None and out.finish_reason == "abort"
    drain(engine)
    assert done.finish_reason == "length"
    assert engine.allocator.free == free and engine.idle


def test_a_request_waits_for_blocks_and_then_runs(make_engine) -> None:  # type: ignore[no-untyped-def]
    # 1 null block + 4 usable blocks of 16 tokens: one 40-token request at a time
    engine = make_engine(num_blocks=5, block_size=16)
    first, second = (Request(engine.tokenizer.encode("x" * 20), greedy(20)) for _ in range(2))
    engine.add(first)
    engine.add(second)
    engine.step()
    assert first in engine.running and second in engine.waiting
    drain(engine)
    assert len(first.output) == len(second.output) == 20
    assert engine.allocator.free == 4


def test_requests_that_can_never_fit_are_refused(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(num_blocks=5, block_size=16, max_model_len=512)
    with pytest.raises(ConfigError, match="max_tokens"):
        engine.add(Request([1] * 500, greedy(100)))  # longer than the context
    with pytest.raises(ConfigError, match="KV blocks"):
        engine.add(Request([1] * 60, greedy(40)))  # more blocks than the cache has
    with pytest.raises(ConfigError, match="prompt"):
        engine.add(Request([EOS + 50], greedy(1)))  # not a token id of the tokenizer
    with pytest.raises(ConfigError, match="prompt"):
        engine.add(Request([], greedy(1)))


def test_eos_ends_a_completion_unless_ignored(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def always_eos(batch, logits):  # type: ignore[no-untyped-def]
        return [EOS] * len(batch), [0.0] * len(batch)

    monkeypatch.setattr(engine, "_sample", always_eos)
    stops = Request([1, 2, 3], SamplingParams(max_tokens=10, temperature=0))
    runs = Request([1, 2, 3], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))
    engine.add(stops)
    engine.add(runs)
    drain(engine)
    assert (stops.output, stops.finish_reason) == ([EOS], "stop")
    assert (len(runs.output), runs.finish_reason) == (10, "length")


def test_sampling_with_a_seed_is_reproducible_and_stays_in_the_tokenizer(engine: Engine) -> None:
    params = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, seed=1234)
    a = run_alone(engine, "sample me", params)
    b = run_alone(engine, "sample me", params)
    c = run_alone(engine, "sample me", SamplingParams(max_tokens=24, temperature=1.0, seed=99))
    assert a == b
    assert a != c
    assert all(0 <= t < engine.tokenizer.size for t in a + c)


def test_top_p_keeps_only_the_nucleus() -> None:
    from thaw.engine.engine import _draw

    logits = torch.log(torch.tensor([0.7, 0.2, 0.05, 0.05]))
    g = torch.Generator().manual_seed(0)
    draws = {int(_draw(logits, SamplingParams(temperature=1.0, top_p=0.8), g)) for _ in range(200)}
    assert draws == {0, 1}


def test_the_canary_is_deterministic_and_survives_a_cache_reset(engine: Engine) -> None:
    first = canary.run(engine, "tiny")
    assert len(first["tokens"]) == len(canary.PROMPTS)
    assert all(len(t) == canary.MAX_TOKENS for t in first["tokens"])
    assert first["digest"].startswith("sha256:")
    # what a thaw does to the cache: its memory comes back with garbage (thaw.memory can poison it with NaN)
    engine.kv.data.fill_(float("nan"))
    engine.reset_cache()
    assert canary.run(engine, "tiny") == first
    assert engine.idle


def test_the_canary_notices_a_change_of_weights(engine: Engine) -> None:
    before = canary.run(engine, "tiny")
    with torch.no_grad():
        engine.model.norm.weight.mul_(1.001)
    after = canary.run(engine, "tiny")
    assert after["digest"] != before["digest"]


def test_the_canary_given_to_quiesce_reuses_the_start_up_run_once(engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = []
    real = canary.run
    monkeypatch.setattr(canary, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    check = canary.Canary(engine, "tiny")
    recorded = check.record()
    assert check() == recorded and len(calls) == 1  # quiesce records the start-up result
    assert check() == recorded and len(calls) == 2  # after a restore it runs again


def test_a_canary_of_more_prompts_than_there_are_is_refused(engine: Engine) -> None:
    with pytest.raises(ConfigError, match="canary_prompts"):
        canary.Canary(engine, "tiny", prompts=len(canary.PROMPTS) + 1)


def test_reset_cache_refuses_while_requests_are_in_flight(engine: Engine) -> None:
    engine.add(Request([1, 2, 3], greedy(5)))
    with pytest.raises(RuntimeError, match="in flight"):
        engine.reset_cache()
