"""``AgentClient``: talk to a thaw agent over its unix socket, or over TCP with a bearer token.

::

    from thaw.api import AgentClient

    agent = AgentClient(socket="/run/thaw/agent.sock")          # or AgentClient(base_url=..., token=...)
    job = agent.snapshot("llm", "llm-v1")
    job = agent.wait(job.id, timeout=600)
    if job.state == "failed":
        print(job.error.reason, job.error.message)

An error the agent answers with (``{"error": {...}}``) raises ``AgentError`` carrying the
HTTP status, the agent's reason, message and hint, whether it is retryable, and the type
the agent raised (``AgentError.original()`` gives that error back: BusyError,
ArtifactNotFound, ...). No agent answering is ``AgentUnavailable`` (retryable).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from thaw.api.models import (
    AgentStatus,
    ArtifactSummary,
    Deleted,
    ErrorBody,
    Inspection,
    Job,
    LaunchRequest,
    PodRef,
    Recovery,
    Swept,
    SweepRequest,
    RestoreRequest,
    SnapshotRequest,
    Worker,
)
from thaw.config import DEFAULT_AGENT_SOCKET
from thaw.errors import AgentError, AgentUnavailable, ConfigError, ThawError
from thaw.listen import ParkAtListen
from thaw.model import GpuTarget, Manifest
from thaw.model.manifest import HttpCanaryRequest

DEFAULT_SOCKET = str(DEFAULT_AGENT_SOCKET)


class AgentClient:
    def __init__(self, socket: str | Path | None = None, *, base_url: str | None = None, token: str | None = None,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None, ca: Path | None = None,
                 server_name: str | None = None) -> None:
        """``ca``: PEM file of the CA that signed the agents' certificates (https:// URLs; else the system's).
        ``server_name``: the name the agent's certificate must carry when it differs from the URL's host
        (agents reached by pod IP, sharing one certificate: docs/security.md)."""
        if base_url is None and socket is None and transport is None:
            socket = DEFAULT_SOCKET
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if transport is None and socket is not None:
            transport = httpx.HTTPTransport(uds=str(socket))
        self.where = str(socket) if socket is not None else (base_url or "agent")
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            verify = ssl.create_default_context(cafile=str(ca))
            verify.minimum_version = ssl.TLSVersion.TLSv1_2
        self._extensions = {"sni_hostname": server_name} if server_name else {}
        self._http = httpx.Client(base_url=base_url or "http://thaw-agent", transport=transport, headers=headers,
                                  timeout=timeout, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:  # noqa: PYI034 - a final class in practice
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- agent ----
    def status(self) -> AgentStatus:
        return AgentStatus.model_validate(self._call("GET", "/v1/status"))

    def healthy(self) -> bool:
        try:
            self._call("GET", "/healthz")
            return True
        except ThawError:  # unavailable, or answering with an error: not an agent to use
            return False

    def metrics(self) -> str:
        return str(self._call("GET", "/metrics", raw=True))

    # ---- workers ----
    def launch(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: str = "/",
               park_at_listen: ParkAtListen | None = None) -> Worker:
        req = _request(LaunchRequest, name=name, argv=argv, env=env or {}, cwd=cwd, park_at_listen=park_at_listen)
        return Worker.model_validate(self._call("POST", "/v1/workers", json=req))

    def workers(self, *, include_gone: bool = False) -> list[Worker]:
        params = {"all": "true"} if include_gone else None
        return [Worker.model_validate(w) for w in self._call("GET", "/v1/workers", params=params)]

    def worker(self, ref: str) -> Worker:
        return Worker.model_validate(self._call("GET", f"/v1/workers/{ref}"))

    def stop(self, ref: str) -> Worker:
        return Worker.model_validate(self._call("DELETE", f"/v1/workers/{ref}"))

    def release(self, ref: str) -> Worker:
        return Worker.model_validate(self._call("POST", f"/v1/workers/{ref}/release"))

    # ---- operations (jobs) ----
    def snapshot(self, worker: str, artifact: str, *, leave_running: bool = False,
                 ready_timeout: float = 60.0,
                 canary_http: Sequence[HttpCanaryRequest | dict[str, Any]] | None = None,
                 pod: PodRef | None = None, key: str | None = None) -> Job:
        """``pod``: the pod whose worker to snapshot; ``key``: an idempotency key."""
        req = _request(SnapshotRequest, worker=worker, artifact=artifact, leave_running=leave_running,
                       ready_timeout=ready_timeout, canary_http=list(canary_http or []), pod=pod,
                       idempotency_key=key)
        return Job.model_validate(self._call("POST", "/v1/snapshots", json=req))

    def restore(self, artifact: str, *, name: str | None = None, gpu: GpuTarget | None = None,
                verify_canary: bool = True, digest: str | None = None, pod: PodRef | None = None,
                key: str | None = None) -> Job:
        """``pod``: the pod to restore into; ``key``: an idempotency key."""
        req = _request(RestoreRequest, artifact=artifact, name=name, gpu=gpu, verify_canary=verify_canary,
                       digest=digest, pod=pod, idempotency_key=key)
        return Job.model_validate(self._call("POST", "/v1/restores", json=req))

    def verify(self, artifact: str, *, digest: str | None = None) -> Job:
        params = {"digest": digest} if digest else None
        return Job.model_validate(self._call("POST", f"/v1/artifacts/{artifact}/verify", params=params))

    def job(self, job_id: str, *, wait: float = 0.0) -> Job:
        params = {"wait": wait} if wait else None
        read = self._http.timeout.read or 0.0
        return Job.model_validate(self._call("GET", f"/v1/jobs/{job_id}", params=params,
                                             timeout=read + wait if wait else None))

    def jobs(self, limit: int = 100) -> list[Job]:
        return [Job.model_validate(j) for j in self._call("GET", "/v1/jobs", params={"limit": limit})]

    def wait(self, job_id: str, timeout: float = 600.0) -> Job:
        """The job once it has finished; TimeoutError if it has not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            job = self.job(job_id, wait=max(0.0, min(left, 30.0)))
            if job.state.finished:
                return job
            if left <= 0:
                raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f}s (now {job.state.value}, "
                                   f"phase {job.progress.phase if job.progress else '-'})")

    # ---- artifacts ----
    def artifacts(self) -> list[ArtifactSummary]:
        return [ArtifactSummary.model_validate(a) for a in self._call("GET", "/v1/artifacts")]

    def artifact(self, name: str) -> Manifest:
        """The artifact's manifest."""
        return Manifest.model_validate(self._call("GET", f"/v1/artifacts/{name}"))

    def inspect(self, name: str) -> Inspection:
        """The artifact's manifest once every file it lists is there, and what this node's trust says of it."""
        return Inspection.model_validate(self._call("GET", f"/v1/artifacts/{name}/inspect"))

    def delete(self, name: str) -> Deleted:
        return Deleted.model_validate(self._call("DELETE", f"/v1/artifacts/{name}"))

    def sweep(self, older_than_s: float | None = None) -> Swept:
        """``thaw gc``: remove what crashed operations left on the agent's node and in its store."""
        req = _request(SweepRequest, older_than_s=older_than_s)
        return Swept.model_validate(self._call("POST", "/v1/sweep", json=req))

    def recover(self) -> list[Recovery]:
        """Have the agent settle operations whose process died without unwinding (``thaw gc``)."""
        return [Recovery.model_validate(r) for r in self._call("POST", "/v1/recover")]

    # ---- transport ----
    def _call(self, method: str, path: str, *, raw: bool = False, timeout: float | None = None,
              **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                                   extensions=self._extensions, **kwargs)
        except httpx.TransportError as exc:
            raise AgentUnavailable(f"no thaw agent answers at {self.where}: {exc}",
                                   hint="is `thaw agent serve` running? (--socket / --listen)") from exc
        if r.status_code >= 400:
            raise _error(r, f"{method} {path}")
        if raw:
            return r.text
        return r.json() if r.content else None


def _request(model: type[BaseModel], **fields: Any) -> dict[str, Any]:
    """A request body, checked here first: a bad name fails before any network round trip."""
    try:
        return model(**fields).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or model.__name__
        raise ConfigError(where, first.get("msg", str(exc))) from None


def _error(r: httpx.Response, what: str) -> AgentError:
    """The agent's error answer: status, reason, message, hint, and the type it raised (``AgentError.original``)."""
    try:
        err = ErrorBody.model_validate(r.json()).error
    except (ValueError, ValidationError):
        return AgentError(r.status_code, "http_error", f"{what}: HTTP {r.status_code}: {r.text[:300]}")
    return AgentError(r.status_code, err.reason, err.message, hint=err.hint, kind=err.kind,
                      retryable=err.retryable if err.kind else None, fields=err.fields, detail=err.detail)
