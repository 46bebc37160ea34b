"""``AgentPort`` over HTTP: thaw.agent.client.AgentClient, with its errors sorted into temporary and permanent.

The client raises ``AgentError(status, reason, ...)`` for every refusal; the reconcile
logic wants thaw's own types, so a 409 becomes BusyError (wait and retry), a 404
ArtifactNotFound, and 5xx stays an AgentError that ``agents.is_temporary`` retries.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from thaw.agent.client import AgentClient, AgentError
from thaw.errors import ArtifactNotFound, BusyError

T = TypeVar("T")


class HttpAgent:
    def __init__(self, url: str, *, token: str | None, timeout: float = 10.0, ca: Path | None = None,
                 server_name: str | None = None) -> None:
        self.url = url
        self._client = AgentClient(base_url=url, token=token, timeout=timeout, ca=ca, server_name=server_name)

    def snapshot(self, worker: str, artifact: str, *, leave_running: bool = True,
                 canary_http: list[dict[str, Any]] | None = None, pod: dict[str, str] | None = None,
                 key: str | None = None) -> str:
        return _mapped(lambda: self._client.snapshot(worker, artifact, leave_running=leave_running,
                                                     canary_http=canary_http, pod=pod, key=key).id)

    def restore(self, artifact: str, *, gpu: str | None = None, name: str | None = None,
                digest: str | None = None, pod: dict[str, str] | None = None, key: str | None = None) -> str:
        return _mapped(lambda: self._client.restore(artifact, gpu=gpu, name=name, digest=digest, pod=pod,
                                                    key=key).id)

    def job(self, job_id: str) -> dict[str, Any]:
        return _mapped(lambda: self._client.job(job_id).model_dump(mode="json"))

    def inspect_artifact(self, name: str) -> dict[str, Any]:
        return _mapped(lambda: self._client.artifact(name))

    def node_info(self) -> dict[str, Any]:
        return _mapped(lambda: self._client.status().model_dump(mode="json"))

    def delete_artifact(self, name: str) -> None:
        _mapped(lambda: self._client.delete(name))

    def stop_worker(self, name: str) -> None:
        try:
            self._client.stop(name)
        except AgentError as exc:
            if exc.status != 404:  # no such worker: nothing to stop
                raise _mapped_error(exc) from exc

    def close(self) -> None:
        self._client.close()


def _mapped(call: Callable[[], T]) -> T:
    try:
        return call()
    except AgentError as exc:
        raise _mapped_error(exc) from exc


def _mapped_error(exc: AgentError) -> Exception:
    if exc.status == 409:
        return BusyError(exc.message, hint=exc.hint)
    if exc.status == 404:
        return ArtifactNotFound(exc.message, hint=exc.hint)
    return exc
