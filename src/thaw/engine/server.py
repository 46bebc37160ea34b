"""The HTTP API: OpenAI-style completions, health and metrics.

::

    POST /v1/completions   {"prompt": "...", "max_tokens": 16, "temperature": 1.0, "stream": false, ...}
                           → OpenAI's text_completion object, or server-sent events ending in [DONE]
    GET  /v1/models        the one model served
    GET  /health           200 {"status": "ok", "startup": {...}, "canary": {...}, ...}; 503 if the engine failed
    GET  /metrics          Prometheus text format

Beyond OpenAI's fields a completion request may set ``ignore_eos`` (generate exactly
``max_tokens``) and ``return_token_ids`` (each choice carries ``token_ids``), as vLLM
allows — a restored worker is checked by comparing token ids with its canary.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from thaw.engine.engine import Output, Request, SamplingParams
from thaw.engine.loop import EngineLoop, EngineStopped
from thaw.engine.metrics import EngineMetrics
from thaw.engine.tokenizer import Detokenizer
from thaw.errors import ConfigError


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields (user, ...) that change nothing here

    model: str | None = None
    prompt: str | list[int]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice per request is supported")
    echo: Literal[False] = Field(False, description="not supported")
    logprobs: None = Field(None, description="not supported")
    stop: None = Field(None, description="not supported")
    ignore_eos: bool = False
    return_token_ids: bool = False


@dataclass
class ServerState:
    """What the HTTP handlers read; ``info`` is served by /health as it is, plus live engine figures."""

    loop: EngineLoop
    metrics: EngineMetrics
    model_name: str
    info: dict[str, Any] = field(default_factory=dict)


def build_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="thaw engine", docs_url=None, redoc_url=None)
    engine = state.loop.engine

    @app.exception_handler(RequestValidationError)
    async def invalid(_: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(400, f"{param}: {first.get('msg', 'invalid request')}", param)

    @app.get("/health")
    async def health() -> JSONResponse:
        live = {
            "status": "ok" if state.loop.alive else "failed",
            "running": len(engine.running),
            "waiting": len(engine.waiting),
            "kv": {"blocks": engine.allocator.num_blocks, "free": engine.allocator.free,
                   "block_size": engine.block_size, "bytes": engine.kv.nbytes},
        }
        if state.loop.error is not None:
            live["error"] = f"{type(state.loop.error).__name__}: {state.loop.error}"
        return JSONResponse({**state.info, **live}, status_code=200 if state.loop.alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "owned_by": "thaw"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        tokenizer = engine.tokenizer
        prompt = tokenizer.encode(body.prompt) if isinstance(body.prompt, str) else body.prompt
        params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                seed=body.seed, ignore_eos=body.ignore_eos)
        try:
            engine.check(prompt, params)
        except ConfigError as exc:
            return _error(400, str(exc), exc.field)
        request = Request(prompt, params, id=f"cmpl-{uuid.uuid4().hex}")
        aio = asyncio.get_running_loop()
        outputs: asyncio.Queue[Output] = asyncio.Queue()
        try:
            state.loop.submit(request, lambda out: _deliver(aio, outputs, out))
        except EngineStopped as exc:
            return _error(503, str(exc), None, kind="server_error")
        head = {"id": request.id, "object": "text_completion", "created": int(time.time()),
                "model": state.model_name}
        if body.stream:
            return StreamingResponse(_stream(state.loop, request, outputs, head, body.return_token_ids),
                                     media_type="text/event-stream")
        return await _collect(state.loop, request, outputs, head, body.return_token_ids)

    return app


async def _collect(loop: EngineLoop, request: Request, queue: asyncio.Queue[Output], head: dict[str, Any],
                   with_ids: bool) -> JSONResponse:
    detok, text, ids = Detokenizer(), [], []
    out = None
    try:
        while out is None or out.finish_reason is None:
            out = await queue.get()
            if out.token is not None:
                ids.append(out.token)
                text.append(detok.push(out.token))
    finally:
        if out is None or out.finish_reason is None:  # cancelled: the client went away
            loop.abort(request.id)
    if out.finish_reason == "error":
        return _error(500, "the engine failed while generating", None, kind="server_error")
    text.append(detok.flush())
    choice: dict[str, Any] = {"index": 0, "text": "".join(text), "logprobs": None, "finish_reason": out.finish_reason}
    if with_ids:
        choice["token_ids"] = ids
    usage = {"prompt_tokens": len(request.prompt), "completion_tokens": len(ids),
             "total_tokens": len(request.prompt) + len(ids)}
    return JSONResponse({**head, "choices": [choice], "usage": usage})


async def _stream(loop: EngineLoop, request: Request, queue: asyncio.Queue[Output], head: dict[str, Any],
                  with_ids: bool) -> AsyncIterator[str]:
    detok = Detokenizer()
    out = None
    try:
        while out is None or out.finish_reason is None:
            out = await queue.get()
            text = detok.push(out.token) if out.token is not None else ""
            if out.finish_reason is not None:
                text += detok.flush()
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": out.finish_reason}
            if with_ids:
                choice["token_ids"] = [out.token] if out.token is not None else []
            yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
    finally:
        if out is None or out.finish_reason is None:  # the client disconnected: stop generating for it
            loop.abort(request.id)
    yield "data: [DONE]\n\n"


def _error(status: int, message: str, param: str | None, *, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)


def _deliver(aio: asyncio.AbstractEventLoop, outputs: asyncio.Queue[Output], out: Output) -> None:
    """Hand an output from the engine's thread to the request's coroutine on the event loop."""
    aio.call_soon_threadsafe(outputs.put_nowait, out)
