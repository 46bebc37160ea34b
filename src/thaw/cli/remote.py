"""The CLI's route through a node agent, when one runs.

``thaw snapshot``, ``restore``, ``run``, ``ls``, ``verify`` and ``rm`` go through the agent
when ``--agent`` or ``$THAW_AGENT`` names one (a unix socket path, or ``https://HOST:PORT`` with
``$THAW_AGENT_TOKEN``, ``$THAW_AGENT_CA`` and, where the certificate names another host,
``$THAW_AGENT_SERVER_NAME``), or when the default socket (/run/thaw/agent.sock) answers: the agent
then holds the worker, records the job, checks the canary and writes the audit log. ``--local``
runs the pipeline in the CLI's own process instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thaw.errors import ThawError

if TYPE_CHECKING:
    from thaw.agent.client import AgentClient
    from thaw.agent.models import Job


def agent_for(address: str | None, *, local: bool) -> AgentClient | None:
    """The agent to use, or None to run locally. An agent named explicitly must answer."""
    if local:
        return None
    from thaw.agent.client import DEFAULT_SOCKET, AgentClient, AgentUnavailable

    explicit = address or os.environ.get("THAW_AGENT")
    target = explicit or (DEFAULT_SOCKET if Path(DEFAULT_SOCKET).exists() else None)
    if target is None:
        return None
    if target.startswith(("http://", "https://")):
        ca = os.environ.get("THAW_AGENT_CA")  # the CA of the agent's TLS certificate (https://)
        client = AgentClient(base_url=target, token=os.environ.get("THAW_AGENT_TOKEN"), ca=Path(ca) if ca else None,
                             server_name=os.environ.get("THAW_AGENT_SERVER_NAME") or None)
    else:
        client = AgentClient(socket=target.removeprefix("unix://"))
    if client.healthy():
        return client
    if explicit:
        raise AgentUnavailable(f"no thaw agent answers at {target}",
                               hint="start one with `thaw agent serve`, or use --local")
    return None  # a stale default socket: nobody serves it, so run locally


def follow(client: AgentClient, job: Job, *, json_out: bool) -> dict[str, Any] | None:
    """Follow ``job`` with a progress line; print its result as JSON (and return None) with --json."""
    from thaw.cli.output import emit_json, progress

    with progress(not json_out) as cb:
        result = run_job(client, job, cb)
    if json_out:
        emit_json(result)
        return None
    return result


def run_job(client: AgentClient, job: Job, progress: Any, timeout: float = 3600.0) -> dict[str, Any]:
    """Follow a job to its end, showing its phase; its result, or a ThawError with the agent's reason."""
    import time

    deadline = time.monotonic() + timeout
    while job.state.value in ("pending", "running"):
        if job.progress is not None:
            progress(job.progress.phase, job.progress.fraction, f"{job.progress.detail} (agent job {job.id})")
        if time.monotonic() > deadline:
            raise ThawError(f"agent job {job.id} did not finish within {timeout:.0f}s",
                            hint="`thaw agent status` shows it; it may still finish")
        job = client.job(job.id, wait=2.0)
    if job.state.value == "failed":
        err = job.error
        raise ThawError(f"{job.kind.value} failed on node {job.node}: {err.message if err else 'no reason given'}",
                        hint=err.hint if err else None)
    return job.result or {}
