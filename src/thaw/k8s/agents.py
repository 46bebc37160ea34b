"""How the operator reaches the thaw agent on a node, and what it expects of it.

The operator needs a few things from an agent (``AgentPort``): start a snapshot job,
start a restore job, read a job, read a manifest, report the node's GPUs, delete an
artifact, stop a worker — in the agent's own models (thaw.api), never guessed shapes. Jobs run
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from thaw.api.models import AgentStatus, Job, PodRef
from thaw.errors import AgentUnavailable, ThawError
from thaw.k8s.resources import AGENT_URL
from thaw.model import GpuTarget, Manifest

__all__ = ["AgentLookup", "AgentPort", "AgentUnavailable", "Connect", "agent_url", "http_connector", "is_temporary"]


class AgentPort(Protocol):
    """What the operator calls on a node's agent (agent_http.HttpAgent over thaw.api.client.AgentClient).

    It speaks the agent's own models (thaw.api), and raises the errors the agent raised
    (BusyError, ArtifactNotFound, ...; AgentUnavailable when it does not answer).
    """

    def snapshot(self, worker: str, artifact: str, *, leave_running: bool = True,
                 canary_http: list[dict[str, Any]] | None = None, pod: PodRef | None = None,
                 key: str | None = None) -> str:
        """Start a snapshot job of ``worker`` into ``artifact`` (with an HTTP canary: thaw.pipeline.http_canary);
        returns the job id. ``pod``: when the worker runs in that pod under thaw's
        entrypoint; a retry with the same idempotency ``key`` returns the job the first call started."""
        ...

    def restore(self, artifact: str, *, gpu: GpuTarget | None = None, name: str | None = None,
                digest: str | None = None, pod: PodRef | None = None, key: str | None = None) -> str:
        """Start a restore job (with the canary check) of ``artifact``, only if it has ``digest`` when one is
        given, into ``pod`` when given; returns the job id."""
        ...

    def job(self, job_id: str) -> Job:
        """A job: its state, progress, and its result or error."""
        ...

    def inspect_artifact(self, name: str) -> Manifest:
        """The artifact's manifest: its GPUs, canary, files."""
        ...

    def node_info(self) -> AgentStatus:
        """The agent's status, with this node's GPUs."""
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
class AgentLookup:
    """Where the DaemonSet's agent pods are: namespace, label selector, the DaemonSet that owns them, port, scheme;
    and whether a Node's ``thaw.dev/agent-url`` annotation may name an agent instead (off: see above)."""

    namespace: str = "thaw-system"
    selector: str = "app.kubernetes.io/name=thaw-agent"
    port: int = 7070
    daemonset: str = "thaw-agent"
    scheme: str = "http"  # https when the operator has the agents' CA (OperatorConfig.agent_ca)
    url_annotation: bool = False


def agent_url(node: dict[str, Any], agent_pods: list[dict[str, Any]], *, lookup: AgentLookup) -> str | None:
    """The URL of ``node``'s agent: its Ready pod of the agent DaemonSet (or, only when ``lookup.url_annotation``,
    the node's ``thaw.dev/agent-url`` annotation); None when it has none."""
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
    """Whether a failed agent call is worth retrying: the error says so (thaw.errors: retryable vs permanent)."""
    return (isinstance(exc, ThawError) and exc.retryable) or isinstance(exc, (ConnectionError, TimeoutError))


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
