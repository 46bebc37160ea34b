"""The canary: fixed prompts, decoded greedily, as a fingerprint of a worker's state.

Recorded at the quiesce point and stored with the snapshot; a restored copy runs it
again before it takes traffic, and thaw compares the two. It goes through the serving
path itself — prefill, paged KV cache, the batch-1 CUDA graph — one prompt at a time,
so that an HTTP client sending the same prompts one by one (temperature 0,
``ignore_eos``) gets exactly ``tokens`` back.

The result::

    {"version": 1, "model": "qwen3-0.6b", "max_tokens": 8,
     "prompts": ["The capital of France is", ...],          (3 prompts × 8 tokens on the GPU,
     "tokens": [[..8 ids..], ...],                           1 × 4 on the CPU by default)
     "digest": "sha256:<hex of the chosen tokens' logprobs, rounded to 1e-4, as float32>"}

The process is identical in memory after a restore and the kernels are deterministic
for a fixed batch shape, so both the tokens and the digest must match exactly.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from thaw.engine.engine import Engine, Request, SamplingParams
from thaw.errors import ConfigError

VERSION = 1
PROMPTS = ("The capital of France is", "def fibonacci(n):", "thaw: a snapshot restores in")
MAX_TOKENS = 8


def run(engine: Engine, model_name: str, *, prompts: tuple[str, ...] = PROMPTS,
        max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    if engine.has_work():
        raise RuntimeError("the canary needs an idle engine")
    tokens: list[list[int]] = []
    logprobs: list[float] = []
    for prompt in prompts:
        request = Request(engine.tokenizer.encode(prompt), SamplingParams(max_tokens, temperature=0, ignore_eos=True))
        engine.add(request)
        while engine.has_work():
            for out in engine.step():
                if out.logprob is not None:
                    logprobs.append(round(out.logprob, 4))
        tokens.append(request.output)
    digest = hashlib.sha256(struct.pack(f"<{len(logprobs)}f", *logprobs)).hexdigest()
    return {"version": VERSION, "model": model_name, "max_tokens": max_tokens, "prompts": list(prompts),
            "tokens": tokens, "digest": f"sha256:{digest}"}


class Canary:
    """What ``thaw.worker.quiesce(canary=...)`` calls.

    The engine runs the canary once during start-up (timed as its own phase) and quiesce
    records that result — nothing ran in between, so running it again would only cost
    time. Every later call (after a restore) runs it afresh.
    """

    def __init__(self, engine: Engine, model_name: str, *, prompts: int = len(PROMPTS),
                 max_tokens: int = MAX_TOKENS) -> None:
        if not 1 <= prompts <= len(PROMPTS):
            raise ConfigError("canary_prompts", f"{prompts} is not between 1 and {len(PROMPTS)}")
        self.engine = engine
        self.model_name = model_name
        self.prompts = PROMPTS[:prompts]
        self.max_tokens = max_tokens
        self.recorded: dict[str, Any] | None = None
        self._fresh = False

    def record(self) -> dict[str, Any]:
        self.recorded = self._run()
        self._fresh = True
        return self.recorded

    def __call__(self) -> dict[str, Any]:
        if self._fresh and self.recorded is not None:
            self._fresh = False
            return self.recorded
        return self._run()

    def _run(self) -> dict[str, Any]:
        return run(self.engine, self.model_name, prompts=self.prompts, max_tokens=self.max_tokens)
