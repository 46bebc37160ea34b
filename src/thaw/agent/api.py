"""The agent's HTTP API (FastAPI): routes, authentication, and errors as clear JSON bodies.

Routes (all under auth; see auth.py for the security model)::

    GET    /v1/status                     AgentStatus
    GET    /healthz                       {"ok": true}
    GET    /metrics                       Prometheus text format
    GET    /v1/workers[?all=true]         [Worker]
    POST   /v1/workers                    LaunchRequest → 201 Worker
    GET    /v1/workers/{ref}              Worker           (ref: worker name or instance id)
    DELETE /v1/workers/{ref}              Worker           (stopped)
    POST   /v1/workers/{ref}/release      Worker           (a parked worker goes on serving)
    POST   /v1/recover                    [Recovery]         (settle operations whose process died: `thaw gc`)
    POST   /v1/sweep                      SweepRequest → Swept (remove what crashed operations left: `thaw gc`)
    POST   /v1/snapshots                  SnapshotRequest → 202 Job
    POST   /v1/restores                   RestoreRequest → 202 Job
    GET    /v1/jobs[?limit=N]             [Job]
    GET    /v1/jobs/{id}[?wait=S]         Job              (wait: long-poll up to S seconds for it to finish)
    GET    /v1/artifacts                  [ArtifactSummary]
    GET    /v1/artifacts/{name}           the artifact's Manifest
    GET    /v1/artifacts/{name}/inspect   Inspection       (manifest of a complete artifact, and its signature)
    POST   /v1/artifacts/{name}/verify    202 Job          (?digest=: require exactly that digest)
    DELETE /v1/artifacts/{name}           Deleted

Every error is ``{"error": {"reason", "message", "hint", "kind", "retryable", "fields", "detail"}}``
(thaw.api.ErrorBody; ``kind`` names the thaw.errors type) with
401 (no or bad credentials), 403 (a read-only token asked to change something), 404, 409
(busy: another operation holds the worker or artifact, or the name is taken), 413 (a body
over MAX_BODY), 422 (malformed request or invalid name) or 500 (a bug: the API is fuzzed
for it, tests/agent/test_api_fuzz.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from thaw import __version__
from thaw.agent.auth import PEER_KEY, RejectionLog, Tokens
from thaw.agent.metrics import CONTENT_TYPE
from thaw.agent.runner import error_detail
from thaw.agent.service import Agent
from thaw.api.models import (
    AgentStatus,
    ArtifactSummary,
    Deleted,
    ErrorBody,
    ErrorDetail,
    Inspection,
    Job,
    LaunchRequest,
    Recovery,
    RestoreRequest,
    SnapshotRequest,
    Swept,
    SweepRequest,
    Worker,
)
from thaw.errors import (
    ArtifactNotFound,
    BusyError,
    ConfigError,
    HostError,
    IntegrityError,
    JobNotFound,
    ThawError,
    WorkerNotFound,
)

CALLER_KEY = "thaw_caller"
#: the largest request body the agent reads (the largest real one, a snapshot with 64 HTTP canary requests, is far
#: smaller); a larger one is refused before it is read
MAX_BODY = 1 << 20
#: how often a long-polling GET /v1/jobs/{id}?wait=S looks at its job
JOB_POLL_S = 0.05

#: HTTP status for each kind of error the agent raises on purpose
STATUS: list[tuple[type[ThawError], int]] = [
    (ConfigError, 422),
    (ArtifactNotFound, 404),
    (WorkerNotFound, 404),
    (JobNotFound, 404),
    (BusyError, 409),
    (IntegrityError, 409),  # the stored artifact is damaged, not the digest asked for, or not signed as required
    (HostError, 503),
]


def create_app(agent: Agent, tokens: Tokens | None = None) -> FastAPI:
    app = FastAPI(title="thaw agent", version=__version__, docs_url=None, redoc_url=None,
                  responses={401: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}})
    app.state.agent = agent
    app.add_middleware(_Authenticate, tokens=tokens or Tokens(), agent=agent)
    _errors(app, agent)

    def caller(request: Request) -> dict[str, Any]:
        return dict(request.scope.get("state", {}).get(CALLER_KEY, {}))

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(agent.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/status", response_model=AgentStatus)
    def status() -> AgentStatus:
        return agent.status()

    # ---- workers ----
    @app.get("/v1/workers", response_model=list[Worker])
    def workers(all: bool = Query(False, description="include workers that are gone")) -> list[Worker]:
        return agent.workers(include_gone=all)

    @app.post("/v1/workers", response_model=Worker, status_code=201)
    async def launch(req: LaunchRequest, request: Request) -> Worker:
        return await run_in_threadpool(agent.launch, req, caller(request))

    @app.get("/v1/workers/{ref:path}", response_model=Worker)
    def worker(ref: str) -> Worker:
        return agent.worker(ref)

    @app.delete("/v1/workers/{ref:path}", response_model=Worker)
    async def stop(ref: str, request: Request) -> Worker:
        return await run_in_threadpool(agent.stop_worker, ref, caller(request))

    @app.post("/v1/workers/{ref:path}/release", response_model=Worker)
    async def release(ref: str, request: Request) -> Worker:
        return await run_in_threadpool(agent.release_worker, ref, caller(request))

    @app.post("/v1/sweep", response_model=Swept)
    async def sweep(req: SweepRequest, request: Request) -> Swept:
        return await run_in_threadpool(agent.sweep, req, caller(request))

    @app.post("/v1/recover", response_model=list[Recovery])
    async def recover(request: Request) -> list[Recovery]:
        return await run_in_threadpool(agent.recover_workers, caller(request))

    # ---- jobs ----
    @app.post("/v1/snapshots", response_model=Job, status_code=202)
    async def snapshot(req: SnapshotRequest, request: Request) -> Job:
        return await run_in_threadpool(agent.submit_snapshot, req, caller(request))

    @app.post("/v1/restores", response_model=Job, status_code=202)
    async def restore(req: RestoreRequest, request: Request) -> Job:
        return await run_in_threadpool(agent.submit_restore, req, caller(request))

    @app.get("/v1/jobs", response_model=list[Job])
    def jobs(limit: int = Query(100, ge=1, le=10_000)) -> list[Job]:
        return agent.job_list(limit)

    @app.get("/v1/jobs/{job_id}", response_model=Job)
    async def job(job_id: str, wait: float = Query(0.0, ge=0, le=300, description="long-poll seconds")) -> Job:
        # polled on the event loop, not on a thread: many long-polling clients must not use up the thread pool
        deadline = time.monotonic() + wait
        while True:
            current = agent.job(job_id)
            if current.state.finished or time.monotonic() >= deadline:
                return current
            await asyncio.sleep(JOB_POLL_S)

    # ---- artifacts ----
    @app.get("/v1/artifacts", response_model=list[ArtifactSummary])
    async def artifacts() -> list[ArtifactSummary]:
        return await run_in_threadpool(agent.artifacts)

    @app.post("/v1/artifacts/{name:path}/verify", response_model=Job, status_code=202)
    async def verify(name: str, request: Request,
                     digest: str | None = Query(None, description="require exactly this digest")) -> Job:
        return await run_in_threadpool(agent.submit_verify, name, caller(request), digest)

    @app.get("/v1/artifacts/{name:path}/inspect", response_model=Inspection)
    async def inspect(name: str) -> Inspection:
        return await run_in_threadpool(agent.inspect, name)

    @app.get("/v1/artifacts/{name:path}")
    async def artifact(name: str) -> Response:
        manifest = await run_in_threadpool(agent.manifest, name)
        return Response(manifest.to_json(), media_type="application/json")

    @app.delete("/v1/artifacts/{name:path}", response_model=Deleted)
    async def delete(name: str, request: Request) -> Deleted:
        return await run_in_threadpool(agent.delete_artifact, name, caller(request))

    return app


def _error(status: int, reason: str, message: str, hint: str | None = None,
           fields: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
           exc: ThawError | None = None) -> JSONResponse:
    detail = ErrorDetail(reason=reason, message=message, hint=hint, fields=fields or [])
    if exc is not None:
        detail = detail.model_copy(update={"kind": type(exc).__name__, "retryable": exc.retryable,
                                           "detail": error_detail(exc)})
    return JSONResponse(ErrorBody(error=detail).model_dump(mode="json"), status_code=status, headers=headers)


def _errors(app: FastAPI, agent: Agent) -> None:
    @app.exception_handler(ThawError)
    async def thaw_error(request: Request, exc: ThawError) -> JSONResponse:
        status = next((code for cls, code in STATUS if isinstance(exc, cls)), 500)
        reason = "invalid_request" if isinstance(exc, ConfigError) else exc.reason
        fields = [{"field": exc.field, "message": exc.message}] if isinstance(exc, ConfigError) else None
        if status in (409, 422):
            agent.metrics.requests_rejected.labels(reason).inc()
        return _error(status, reason, exc.message, exc.hint, fields, exc=exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()))
            fields.append({"field": loc, "message": e.get("msg", ""), "type": e.get("type", "")})
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        agent.metrics.requests_rejected.labels("invalid_request").inc()
        return _error(422, "invalid_request", f"invalid request: {summary}",
                      "see the agent API in docs/agent.md", fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return _error(exc.status_code, reason, message, "see the agent API in docs/agent.md")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal", f"{type(exc).__name__}: {exc}", "this is a bug in thaw: please report it")


class _Authenticate:
    """Pure ASGI middleware: decide who the caller is before routing, so that bad input never reaches a route."""

    def __init__(self, app: Any, tokens: Tokens, agent: Agent) -> None:
        self.app = app
        self.tokens = tokens
        self.agent = agent
        self.rejections = RejectionLog()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        peer = state.get(PEER_KEY) or {"transport": "unknown"}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if peer.get("transport") == "unix":
            state[CALLER_KEY] = dict(peer)
            await self._with_body(scope, receive, send, headers)
            return
        if not self.tokens:
            message, hint = ("this agent accepts no requests over TCP: no token is configured",
                             "start the agent with --token-file, or use its unix socket")
        else:
            caller = self.tokens.identify(headers.get("authorization"))
            if caller is not None and not caller.may(scope.get("method", "")):
                self.agent.metrics.requests_rejected.labels("forbidden").inc()
                response = _error(403, "forbidden", f"the token of {caller.identity!r} may only read (scope "
                                  f"{caller.scope}): {scope.get('method')} is refused",
                                  "use a token with the operate scope (the token file's 'identity:token' lines)")
                await response(scope, receive, send)
                return
            if caller is not None:
                state[CALLER_KEY] = {"transport": "tcp", "identity": caller.identity, "scope": caller.scope,
                                     "address": peer.get("address")}
                await self._with_body(scope, receive, send, headers)
                return
            message, hint = ("missing or invalid bearer token" if headers.get("authorization") else
                             "authentication required: send 'Authorization: Bearer <token>'",
                             "the token is one of the lines of the agent's --token-file")
        self.agent.metrics.requests_rejected.labels("unauthorized").inc()
        address = str(peer.get("address") or "unknown").rsplit(":", 1)[0]  # the host: each connection has a port
        refused = self.rejections.admit(address)
        if refused is not None:  # the body is never read; the path is cut short: a flood cannot fill the disk
            self.agent.audit.record(f"{scope.get('method', '')[:16]} {scope.get('path', '')[:200]}", "rejected",
                                    caller={"transport": peer.get("transport"), "address": peer.get("address")},
                                    reason="unauthorized",
                                    message=f"{message} ({refused} refused from {address} since the last record)")
        response = _error(401, "unauthorized", message, hint, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    async def _with_body(self, scope: dict[str, Any], receive: Any, send: Any, headers: dict[str, str]) -> None:
        """Pass the request on with its body read first, up to MAX_BODY; a larger one gets 413 unread."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            await self._too_large(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:  # a chunked body that did not say how large it is
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: wait for the client to go (http.disconnect)
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.agent.metrics.requests_rejected.labels("too_large").inc()
        await _error(413, "too_large", f"the request body is larger than {MAX_BODY} bytes",
                     "no request of the agent's API needs that much")(scope, receive, send)
