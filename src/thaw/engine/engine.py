"""The engine core: requests, continuous batching and sampling, one step at a time.

``Engine.step()`` does one scheduling round:

1. admit waiting requests, first come first served, while there is a free batch row
   and the KV cache has blocks for the whole request (prompt + max_tokens: blocks are
   reserved up front, so a running request never has to be preempted);
2. prefill each admitted request on its own (its first token is sampled from it);
3. run one decode step for every running request together — a CUDA graph on the GPU;
4. retire the finished requests and free their blocks.

New requests therefore join a running batch at the next step (continuous batching)
instead of waiting for it to drain. The engine is not thread-safe: one thread
drives it (``loop.EngineLoop`` when serving, the caller during start-up).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from thaw.engine.graphs import DecodeGraphs
from thaw.engine.kv_cache import NULL_BLOCK, BlockAllocator, KVCache
from thaw.engine.model import DecodeInputs, Qwen3
from thaw.engine.tokenizer import ByteTokenizer
from thaw.errors import ConfigError

_ids = itertools.count()


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(eq=False)
class Request:
    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    output: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    generator: torch.Generator | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)


@dataclass(frozen=True)
class Output:
    """One new token of a request; ``finish_reason`` is set on its last (stop, length, abort)."""

    request: Request
    token: int | None
    logprob: float | None
    finish_reason: str | None = None
    index: int = -1  # the token's position in the completion (0: the first token)


@dataclass(frozen=True)
class StepInfo:
    prefills: int = 0  # requests admitted and prefilled in the step
    decoded: int = 0  # batch size of its decode pass


class Engine:
    def __init__(self, model: Qwen3, kv: KVCache, tokenizer: ByteTokenizer, *, max_batch: int,
                 max_model_len: int) -> None:
        self.model = model
        self.kv = kv
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_model_len = max_model_len
        self.block_size = kv.block_size
        self.max_blocks = math.ceil(max_model_len / kv.block_size)
        self.allocator = BlockAllocator(kv.num_blocks)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.graphs: DecodeGraphs | None = None
        self.last_step = StepInfo()

    # -- requests ----------------------------------------------------------------------------

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        """Refuse a request this engine can never serve (raises ConfigError naming the field)."""
        if not prompt:
            raise ConfigError("prompt", "is empty")
        self.tokenizer.check(prompt)
        if params.max_tokens < 1:
            raise ConfigError("max_tokens", f"{params.max_tokens} < 1")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise ConfigError("max_tokens", f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) "
                              f"exceeds the context length {self.max_model_len}")
        if self._blocks_for(len(prompt), params) > self.allocator.num_blocks - 1:
            raise ConfigError("max_tokens", "the request needs more KV blocks than the whole cache has")

    def add(self, request: Request) -> None:
        self.check(request.prompt, request.params)
        if request.params.seed is not None:
            request.generator = torch.Generator(device=self.model.device).manual_seed(request.params.seed)
        self.waiting.append(request)

    def abort(self, request_id: str) -> Output | None:
        for queue in (self.waiting, self.running):
            for r in queue:
                if r.id == request_id:
                    queue.remove(r)
                    return self._finish(r, "abort")
        return None

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def idle(self) -> bool:
        return not self.has_work() and self.allocator.used == 0

    def reset_cache(self) -> None:
        """Forget the cache's contents: every block free and zeroed (after a thaw). Only when idle."""
        if self.has_work():
            in_flight = len(self.running) + len(self.waiting)
            raise RuntimeError(f"cannot reset the KV cache with {in_flight} requests in flight")
        self.allocator.reset()
        self.kv.clear()

    # -- one step ------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Output]:
        admitted = self._admit()
        outputs = [self._prefill(r) for r in admitted]
        decoding = [r for r in self.running if r.finish_reason is None and r.output]
        if decoding:
            outputs += self._decode(decoding)
        self.running = [r for r in self.running if r.finish_reason is None]
        self.last_step = StepInfo(prefills=len(admitted), decoded=len(decoding))
        return outputs

    def _admit(self) -> list[Request]:
        admitted = []
        while self.waiting and len(self.running) < self.max_batch:
            r = self.waiting[0]
            need = self._blocks_for(len(r.prompt), r.params)
            if need > self.allocator.free:
                break
            self.waiting.popleft()
            r.blocks = self.allocator.allocate(need)
            self.running.append(r)
            admitted.append(r)
        return admitted

    def _blocks_for(self, prompt_len: int, params: SamplingParams) -> int:
        # the last sampled token is never fed back, so its K/V is never written
        return math.ceil((prompt_len + params.max_tokens - 1) / self.block_size)

    def _prefill(self, r: Request) -> Output:
        device = self.model.device
        n = len(r.prompt)
        positions = torch.arange(n)
        slots = torch.tensor(r.blocks)[positions // self.block_size] * self.block_size + positions % self.block_size
        logits = self.model.prefill(torch.tensor(r.prompt, device=device), positions.to(device), slots.to(device),
                                    self.kv)
        return self._accept([r], logits)[0]

    def _decode(self, batch: list[Request]) -> list[Output]:
        n = len(batch)
        positions = [r.num_tokens - 1 for r in batch]
        width = max(p // self.block_size + 1 for p in positions)
        shape = self.graphs.shape_for(n, width) if self.graphs else None
        if shape is not None:
            width = shape[1]
        bs = self.block_size
        rows = torch.tensor([
            [r.output[-1] for r in batch],
            positions,
            [r.blocks[p // bs] * bs + p % bs for r, p in zip(batch, positions, strict=True)],
            [p + 1 for p in positions],
        ], dtype=torch.int64)
        tables = torch.tensor([(r.blocks + [NULL_BLOCK] * width)[:width] for r in batch], dtype=torch.int64)
        if shape is not None:
            logits = self.graphs.run(shape, rows, tables)
        else:
            device = self.model.device
            tokens, pos, slots, context_lens = rows.to(device)
            logits = self.model.decode(tokens, pos, slots, self.kv, DecodeInputs(tables.to(device), context_lens))
        return self._accept(batch, logits)

    def _accept(self, batch: list[Request], logits: torch.Tensor) -> list[Output]:
        """Sample one token per request from ``logits`` [B, V] and record it."""
        tokens, logprobs = self._sample(batch, logits)
        now = time.monotonic()
        outputs = []
        for r, token, logprob in zip(batch, tokens, logprobs, strict=True):
            r.output.append(token)
            r.first_token_at = r.first_token_at or now
            reason = None
            if token == self.tokenizer.eos_id and not r.params.ignore_eos:
                reason = "stop"
            elif len(r.output) >= r.params.max_tokens:
                reason = "length"
            if reason:
                self._finish(r, reason)
            outputs.append(Output(r, token, logprob, reason, index=len(r.output) - 1))
        return outputs

    def _sample(self, batch: list[Request], logits: torch.Tensor) -> tuple[list[int], list[float]]:
        # only the tokenizer's ids can be produced; the rest of the (Qwen-sized) vocabulary is never used
        logits = logits[:, : self.tokenizer.size].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = logprobs.argmax(dim=-1)
        for i, r in enumerate(batch):
            if r.params.temperature > 0:
                chosen[i] = _draw(logits[i], r.params, r.generator)
        picked = logprobs.gather(1, chosen[:, None])[:, 0]
        return chosen.tolist(), picked.tolist()

    def _finish(self, r: Request, reason: str) -> Output:
        r.finish_reason = reason
        self.allocator.release(r.blocks)
        r.blocks = []
        return Output(r, None, None, reason)

    # -- warm-up -------------------------------------------------------------------------------

    @torch.inference_mode()
    def capture_graphs(self, batch_sizes: list[int], *, pool: object | None = None) -> int:
        """Capture the decode step for ``batch_sizes`` (GPU only) into ``pool`` (default: torch's). Returns how many."""
        self.graphs = DecodeGraphs(self.model, self.kv, batch_sizes=batch_sizes, max_blocks=self.max_blocks,
                                   pool=pool)
        return self.graphs.capture()

    def warm_up(self) -> None:
        """Run short requests through prefill and decode — a batch of each captured size — then free everything."""
        sizes = self.graphs.batch_sizes if self.graphs else [1]
        for size in sizes:
            for _ in range(min(size, self.max_batch)):
                self.add(Request(self.tokenizer.encode("warm-up"), SamplingParams(max_tokens=2, temperature=0)))
            while self.has_work():
                self.step()


def _draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Sample one id from ``logits`` [V] with temperature and nucleus (top-p) filtering."""
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p  # keep the smallest set reaching top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[0]
