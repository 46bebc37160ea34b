"""An OpenAI-style FastAPI server around a Hugging Face transformers model; it knows nothing of thaw.

The model has the Qwen3 architecture with random weights built from a config (no model
hub), and a byte-level tokenizer. Start-up does what such servers do: load, compile,
warm up (the FastAPI lifespan, before uvicorn binds), then listen::

    POST /v1/completions        {"prompt", "max_tokens"}   → {"id", "created", "choices": [{"text", "token_ids", ...}]}
    POST /v1/chat/completions   {"messages", "max_tokens"} → {"id", "created", "choices": [{"message": {...}}]}
    GET  /health                → {"ok", "pid", "warmup_s", "compiled_graphs", "device", "generate"}

Options::

    --generate padded       greedy decoding over one fixed-shape forward, torch.compile'd (fast to compile: CPU)
    --generate hf-static    transformers' generate() with a static KV cache, which torch.compiles the decode step
                            (mode reduce-overhead: CUDA graphs) — the set-up of issue 16
    --engine-process        the model lives in a spawned child process (vLLM's and SGLang's shape); the parent serves
    --bind-early            bind the listening socket first, then warm up (the wrong order; thaw must say so)
    --bias-file PATH        while PATH exists, add its number to one token's logits (a perturbed copy)
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel

SIZES = {
    "tiny": {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
    "small": {"vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
              "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64},
    "qwen3-0.6b": {"vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128},
}
WARM_PROMPTS = ("Hello, world", "The capital of France is", "def fib(n):")
OFFSET, PAD, BOS = 3, 0, 1  # byte b is token b + OFFSET
SEQ = 128  # the padded mode's one shape; prompts are cut to SEQ - max_tokens
PROMPT = 32  # hf-static: prompts are left-padded to this length (one prefill shape, one cache size)
BIASED_TOKEN = OFFSET + ord("!")


def encode(text: str, limit: int) -> list[int]:
    return [BOS] + [b + OFFSET for b in text.encode()][: max(0, limit - 1)]


def decode(ids: list[int]) -> str:
    return "".join(chr(i - OFFSET) if OFFSET + 32 <= i < OFFSET + 127 else f"<{i}>" for i in ids)


class Engine:
    """The model, compiled and warmed up; ``complete`` is greedy and deterministic."""

    def __init__(self, opts: dict[str, Any]) -> None:
        import torch
        from transformers import Qwen3Config, Qwen3ForCausalLM

        t0 = time.perf_counter()
        self.torch, self.opts = torch, opts
        self.device = torch.device(opts["device"])
        torch.manual_seed(0)
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        config = Qwen3Config(max_position_embeddings=4096, tie_word_embeddings=False, **SIZES[opts["size"]])
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        with torch.device(self.device):
            self.model = Qwen3ForCausalLM(config).to(dtype).eval()
        if opts["generate"] == "padded":
            self.step = self._logits if opts["compile_mode"] == "none" else torch.compile(
                self._logits, dynamic=False, mode=None if opts["compile_mode"] == "default" else opts["compile_mode"])
        for prompt in WARM_PROMPTS:
            self.complete(prompt, opts["max_tokens"])
        self.warmup_s = round(time.perf_counter() - t0, 3)

    def _logits(self, ids: Any) -> Any:
        return self.model(input_ids=ids, use_cache=False).logits

    def complete(self, prompt: str, max_tokens: int) -> list[int]:
        bias = _bias(self.opts.get("bias_file"))
        with self.torch.no_grad():
            if self.opts["generate"] == "padded":
                return self._padded(prompt, max_tokens, bias)
            return self._hf_static(prompt, max_tokens, bias)

    def _padded(self, prompt: str, max_tokens: int, bias: float) -> list[int]:
        torch = self.torch
        tokens = encode(prompt, SEQ - max_tokens)
        buf = torch.full((1, SEQ), PAD, dtype=torch.long, device=self.device)
        out = []
        for _ in range(max_tokens):
            buf[0, : len(tokens)] = torch.tensor(tokens, device=self.device)
            # causal attention: the logits at the last real position ignore the padding after it
            logits = self.step(buf)[0, len(tokens) - 1].float()
            logits[BIASED_TOKEN] += bias
            tokens.append(int(logits.argmax()))
            out.append(tokens[-1])
        return out

    def _hf_static(self, prompt: str, max_tokens: int, bias: float) -> list[int]:
        torch = self.torch
        from transformers import LogitsProcessor, LogitsProcessorList
        from transformers.generation import CompileConfig

        class Bias(LogitsProcessor):
            def __call__(self, input_ids: Any, scores: Any) -> Any:
                scores[:, BIASED_TOKEN] += bias
                return scores

        tokens = encode(prompt, PROMPT)
        ids = torch.tensor([[PAD] * (PROMPT - len(tokens)) + tokens], device=self.device)
        mask = (ids != PAD).long()
        compile_kwargs: dict[str, Any] = (
            {"disable_compile": True} if self.opts["compile_mode"] == "none"
            else {"compile_config": CompileConfig(mode=self.opts["compile_mode"])})
        out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                  do_sample=False, cache_implementation="static", pad_token_id=PAD,
                                  logits_processor=LogitsProcessorList([Bias()]) if bias else None, **compile_kwargs)
        return out[0, ids.shape[1]:].tolist()

    def info(self) -> dict[str, Any]:
        from torch._dynamo.utils import counters

        return {"warmup_s": self.warmup_s, "compiled_graphs": int(counters["stats"]["unique_graphs"]),
                "device": str(self.device), "generate": self.opts["generate"]}


def _bias(path: str | None) -> float:
    try:
        return float(open(path).read()) if path else 0.0
    except (OSError, ValueError):
        return 0.0


def engine_process(conn: Any, opts: dict[str, Any]) -> None:
    """The engine child: build the engine, say so, then answer requests from the pipe until it closes."""
    engine = Engine(opts)
    conn.send({"ready": engine.info()})
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        conn.send(engine.complete(request["prompt"], request["max_tokens"]))


class InProcess:
    """The engine on one thread of its own, warm-up and requests alike: torch.compile's CUDA graph trees are
    per thread, so graphs captured during the warm-up are replayed only from the thread that captured them."""

    def __init__(self, opts: dict[str, Any]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.engine = self.thread.submit(Engine, opts).result()

    def complete(self, prompt: str, max_tokens: int) -> list[int]:
        return self.thread.submit(self.engine.complete, prompt, max_tokens).result()

    def info(self) -> dict[str, Any]:
        return self.engine.info()


class InChild:
    def __init__(self, opts: dict[str, Any]) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child_end = ctx.Pipe()
        self.child = ctx.Process(target=engine_process, args=(child_end, opts), name="engine", daemon=True)
        self.child.start()
        child_end.close()
        if not self.conn.poll(1800):
            raise RuntimeError("the engine process did not get ready")
        self.ready = self.conn.recv()["ready"]
        self.lock = threading.Lock()

    def complete(self, prompt: str, max_tokens: int) -> list[int]:
        with self.lock:
            self.conn.send({"prompt": prompt, "max_tokens": max_tokens})
            return self.conn.recv()

    def info(self) -> dict[str, Any]:
        return {**self.ready, "engine_pid": self.child.pid}


class Completion(BaseModel):
    prompt: str
    max_tokens: int = 16
    temperature: float = 0.0
    model: str | None = None


class Chat(BaseModel):
    messages: list[dict[str, str]]
    max_tokens: int = 16
    temperature: float = 0.0
    model: str | None = None


def build_app(opts: dict[str, Any]) -> Any:
    from fastapi import FastAPI

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # load and warm up before uvicorn binds its socket
        state["engine"] = InChild(opts) if opts["engine_process"] else InProcess(opts)
        yield

    app = FastAPI(lifespan=lifespan)

    def envelope(kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"{kind}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": opts["size"], "choices": [choice]}

    @app.post("/v1/completions")
    def completions(req: Completion) -> dict[str, Any]:
        ids = state["engine"].complete(req.prompt, req.max_tokens)
        return envelope("text_completion", {"index": 0, "text": decode(ids), "token_ids": ids,
                                            "finish_reason": "length"})

    @app.post("/v1/chat/completions")
    def chat(req: Chat) -> dict[str, Any]:
        prompt = "".join(f"{m.get('role', 'user')}: {m.get('content', '')}\n" for m in req.messages) + "assistant: "
        ids = state["engine"].complete(prompt, req.max_tokens)
        return envelope("chat.completion", {"index": 0, "message": {"role": "assistant", "content": decode(ids)},
                                            "finish_reason": "length"})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), **state["engine"].info()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--generate", choices=("padded", "hf-static"), default="padded")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead", "none"), default="default")
    parser.add_argument("--max-tokens", type=int, default=16, help="the warm-up's completion length")
    parser.add_argument("--engine-process", action="store_true")
    parser.add_argument("--bind-early", action="store_true")
    parser.add_argument("--bias-file")
    opts = vars(parser.parse_args())
    early = None
    if opts["bind_early"]:  # the wrong order: listen first, warm up later
        early = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        early.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        early.bind((opts["host"], opts["port"]))
        early.listen()
    import uvicorn

    config = uvicorn.Config(build_app(opts), host=opts["host"], port=opts["port"], log_level="warning")
    uvicorn.Server(config).run(sockets=[early] if early else None)


if __name__ == "__main__":
    main()
