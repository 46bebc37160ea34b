"""``AgentPort`` over HTTP: thaw.api.client.AgentClient, raising the errors the agent raised.

The client raises ``AgentError`` for every refusal, carrying the type the agent raised;
here it becomes that type again (a 409 is the agent's BusyError, a 404 its ArtifactNotFound
or WorkerNotFound), so that the reconcile logic handles thaw's own errors and decides on
``retryable`` alone (agents.is_temporary).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from thaw.api.client import AgentClient
from thaw.api.models import AgentStatus, Job, PodRef
from thaw.errors import AgentError
from thaw.model import GpuTarget, Manifest

T = TypeVar("T")


class HttpAgent:
    def __init__(self, url: str, *, token: str | None, timeout: float = 10.0, ca: Path | None = None,
                 server_name: str | None = None) -> None:
        self.url = url
        self._client = AgentClient(base_url=url, token=token, timeout=timeout, ca=ca, server_name=server_name)

    def snapshot(self, worker: str, artifact: str, *, leave_running: bool = True,
                 canary_http: list[dict[str, Any]] | None = None, pod: PodRef | None = None,
                 key: str | None = None) -> str:
        return _mapped(lambda: self._client.snapshot(worker, artifact, leave_running=leave_running,
                                                     canary_http=canary_http, pod=pod, key=key).id)

    def restore(self, artifact: str, *, gpu: GpuTarget | None = None, name: str | None = None,
                digest: str | None = None, pod: PodRef | None = None, key: str | None = None) -> str:
        return _mapped(lambda: self._client.restore(artifact, gpu=gpu, name=name, digest=digest, pod=pod,
                                                    key=key).id)

    def job(self, job_id: str) -> Job:
        return _mapped(lambda: self._client.job(job_id))

    def inspect_artifact(self, name: str) -> Manifest:
        return _mapped(lambda: self._client.artifact(name))

    def node_info(self) -> AgentStatus:
        return _mapped(self._client.status)

    def delete_artifact(self, name: str) -> None:
        _mapped(lambda: self._client.delete(name))

    def stop_worker(self, name: str) -> None:
        try:
            self._client.stop(name)
        except AgentError as exc:
            if exc.status != 404:  # no such worker: nothing to stop
                _reraise(exc)

    def close(self) -> None:
        self._client.close()


def _mapped(call: Callable[[], T]) -> T:
    try:
        return call()
    except AgentError as exc:
        _reraise(exc)


def _reraise(exc: AgentError) -> NoReturn:
    """Raise the error the agent raised, as its own type (or ``exc`` itself when it has none)."""
    original = exc.original()
    if original is exc:
        raise exc
    raise original from exc
