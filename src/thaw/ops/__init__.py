"""One route for every ``thaw`` command: the ``Operations`` interface, run here or by the node agent.

    ops = connect(settings)                       # the agent when one runs, else this process
    result = ops.snapshot("llm", "llm-v1", leave_running=False, ready_timeout=600, progress=show)

``connect`` picks the agent when ``--agent``/``$THAW_AGENT`` names one (it must answer), or
when one serves the default socket; ``--local`` (``local=True``) runs here. Every mutating
command goes through the agent when one runs, so the agent's holds, jobs and audit log see
every operation on its node; local operations take the same per-worker locks (pipeline).
"""

from __future__ import annotations

from pathlib import Path

from thaw.api.client import AgentClient
from thaw.config import Settings
from thaw.errors import AgentUnavailable
from thaw.ops.base import Operations, Progress
from thaw.ops.local import LocalOperations
from thaw.ops.remote import AgentOperations

__all__ = ["AgentOperations", "LocalOperations", "Operations", "Progress", "connect"]


def connect(settings: Settings, *, local: bool = False) -> Operations:
    """The operations for this command: through the node agent when one runs, else in this process."""
    if local:
        return LocalOperations(settings)
    client = agent_client(settings)
    return AgentOperations(client) if client is not None else LocalOperations(settings)


def agent_client(settings: Settings) -> AgentClient | None:
    """A client of the agent to use, or None when none runs. An agent named explicitly must answer."""
    explicit = settings.client.address
    default = settings.agent.socket
    target = explicit or (str(default) if default is not None and Path(default).exists() else None)
    if target is None:
        return None
    if target.startswith(("http://", "https://")):
        client = AgentClient(base_url=target, token=settings.client.bearer(), ca=settings.client.ca,
                             server_name=settings.client.server_name)
    else:
        client = AgentClient(socket=target.removeprefix("unix://"))
    if client.healthy():
        return client
    client.close()
    if explicit:
        raise AgentUnavailable(f"no thaw agent answers at {target}",
                               hint="start one with `thaw agent serve`, or use --local")
    return None  # a stale default socket: nobody serves it, so run locally
