"""How the operator reaches the thaw agent on a node, and what it expects of it.

The operator needs five things from an agent (``AgentPort``): start a snapshot job,
start a restore job, read a job, report the node's GPUs, delete an artifact. Jobs run
in the agent; the operator only starts and polls them, so an operator restart loses
nothing (the job id is in the object's status).

Finding a node's agent (``agent_url``): the Ready pod on that node of the agent DaemonSet
(label selector ``app.kubernetes.io/name=thaw-agent`` in the agents' namespace, *and*
controlled by the DaemonSet ``thaw-agent``): ``https://<pod IP>:<agent port>`` when the
operator has the agents' CA (TLS, checked against one certificate name), else ``http://``.
Ready, not Running: a crash-looping pod keeps phase Running and its IP but fails its
readiness probe. A pod that merely carries the label is not an agent: the operator sends
its token only to pods the DaemonSet made.

The Node annotation ``thaw.dev/agent-url`` (e.g. ``http://10.0.3.7:7070``) names an agent
instead only when the operator is told to honour it (``--agent-url-annotation``): for
agents that are not the DaemonSet's pods (bare-metal installs, the tests). Off by default,
because whoever may annotate Nodes could otherwise send the operator, and its token, anywhere.

The agent needs no Kubernetes API access for this: it does not register itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from thaw.agent.client import AgentUnavailable
from thaw.k8s.resources import AGENT_URL

__all__ = ["AgentPort", "AgentUnavailable", "Connect", "Job", "agent_url", "http_connector", "is_temporary"]

#: job states as the agent reports them (thaw.agent.models.JobState)
PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"


class AgentPort(Protocol):
    """What the operator calls on a node's agent (thaw.agent.client.AgentClient provides it)."""

    def snapshot(self, worker: str, artifact: str, *, leave_running: bool = True,
                 canary_http: list[dict[str, Any]] | None = None, pod: dict[str, str] | None = None,
                 key: str | None = None) -> str:
        """Start a snapshot job of ``worker`` into ``artifact`` (with an HTTP canary: thaw.pipeline.http_canary);
        returns the job id. ``pod``: {namespace, name, uid} when the worker runs in that pod under thaw's
        entrypoint; a retry with the same idempotency ``key`` returns the job the first call started."""
        ...

    def restore(self, artifact: str, *, gpu: str | None = None, name: str | None = None,
                digest: str | None = None, pod: dict[str, str] | None = None, key: str | None = None) -> str:
        """Start a restore job (with the canary check) of ``artifact``, only if it has ``digest`` when one is
        given, into ``pod`` when given; returns the job id."""
        ...

    def job(self, job_id: str) -> dict[str, Any]:
        """``{"id", "state", "progress", "result", "error"}`` of a job."""
        ...

    def inspect_artifact(self, name: str) -> dict[str, Any]:
        """The artifact's manifest (thaw.store.Manifest as JSON): its GPUs, canary, files."""
        ...

    def node_info(self) -> dict[str, Any]:
        """The agent's status; with ``"gpus": [{"uuid", "name", "memory_free"}]`` when it reports its GPUs."""
        ...

    def delete_artifact(self, name: str) -> None:
        """Delete an artifact from the store (ArtifactNotFound if it is not there)."""
        ...

    def stop_worker(self, name: str) -> None:
        """Stop the worker ``name`` on this node; nothing happens if there is no such worker."""
        ...


#: opens an AgentPort for an agent URL (the real client in production, fakes in tests)
Connect = Callable[[str], AgentPort]


@dataclass(frozen=True)
class Job:
    """An agent job as the operator reads it, whatever the agent's exact JSON looks like."""

    id: str
    state: str
    progress: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    error_reason: str = ""
    error_message: str = ""

    @property
    def done(self) -> bool:
        return self.state in (SUCCEEDED, FAILED)

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCEEDED

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Job:
        error = raw.get("error")
        if isinstance(error, dict):
            reason = str(error.get("reason") or error.get("type") or "error")
            message = str(error.get("message") or error.get("detail") or error)
        elif error:
            reason, message = "error", str(error)
        else:
            reason, message = "", ""
        progress = raw.get("progress") or ""
        if isinstance(progress, dict):  # {"phase": "dump", "fraction": 0.4, "detail": "..."}
            fraction = progress.get("fraction")
            parts = [str(progress.get("phase") or ""), f"{fraction:.0%}" if isinstance(fraction, (int, float)) else "",
                     str(progress.get("detail") or "")]
            progress = " ".join(p for p in parts if p)
        return cls(id=str(raw.get("id") or raw.get("job_id") or ""), state=str(raw.get("state") or "").lower(),
                   progress=str(progress)[:256], result=dict(raw.get("result") or {}),
                   error_reason=reason, error_message=message)


def agent_url(node: dict[str, Any], agent_pods: list[dict[str, Any]], *, lookup: Any) -> str | None:
    """The URL of ``node``'s agent: its Ready pod of the agent DaemonSet (or, only when ``lookup.url_annotation``,
    the node's ``thaw.dev/agent-url`` annotation); None when it has none. ``lookup``: cluster.AgentLookup."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    if lookup.url_annotation and annotations.get(AGENT_URL):
        return annotations[AGENT_URL].rstrip("/")
    name = (node.get("metadata") or {}).get("name")
    for pod in agent_pods:
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        # Ready, not Running: a crash-looping agent pod keeps phase Running and its IP, but is never Ready
        if spec.get("nodeName") != name or not pod_ready(pod) or not status.get("podIP"):
            continue
        if (pod.get("metadata") or {}).get("deletionTimestamp") or not _made_by(pod, lookup.daemonset):
            continue
        host = status["podIP"]
        host = f"[{host}]" if ":" in host else host
        return f"{lookup.scheme}://{host}:{lookup.port}"
    return None


def _made_by(pod: dict[str, Any], daemonset: str) -> bool:
    """The pod is controlled by the DaemonSet ``daemonset`` (its controller owner reference says so)."""
    return any(ref.get("kind") == "DaemonSet" and ref.get("name") == daemonset and ref.get("controller")
               for ref in (pod.get("metadata") or {}).get("ownerReferences") or [])


def pod_ready(pod: dict[str, Any]) -> bool:
    """The pod's Ready condition is True (its readiness probe passes)."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def is_temporary(exc: BaseException) -> bool:
    """Whether a failed agent call is worth retrying: the agent is down or busy, not a wrong request."""
    from thaw.errors import BusyError

    if isinstance(exc, (AgentUnavailable, BusyError, ConnectionError, TimeoutError)):
        return True
    status = getattr(exc, "status", None)  # thaw.agent.client.AgentError: the agent's HTTP status
    if isinstance(status, int) and (status >= 500 or status in (408, 429)):
        return True
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is a core dependency
        return False
    return isinstance(exc, httpx.TransportError)


def http_connector(token: str | None, *, timeout: float = 10.0, ca: Path | None = None,
                   server_name: str | None = None) -> Connect:
    """Connect to agents over HTTP(S) with the bearer token; one client (and its connection pool) per agent URL.
    ``ca``/``server_name``: the agents' TLS certificate is checked against that CA and that name."""
    import threading

    from thaw.k8s.agent_http import HttpAgent

    clients: dict[str, HttpAgent] = {}
    lock = threading.Lock()

    def connect(url: str) -> AgentPort:
        with lock:
            if url not in clients:
                clients[url] = HttpAgent(url, token=token, timeout=timeout, ca=ca, server_name=server_name)
            return clients[url]

    return connect
