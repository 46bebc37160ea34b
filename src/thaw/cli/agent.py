"""``thaw agent``: run the node agent, or ask one how it is.

    thaw agent serve --store s3://artifacts/prod --staging /mnt/nvme/thaw-staging
    thaw agent status

Options default to the agent's settings (thaw.config: THAW_AGENT_SOCKET, THAW_AGENT_LISTEN,
THAW_AGENT_TOKEN_FILE, THAW_STORE, THAW_STAGING, THAW_HOME, THAW_NODE, THAW_CRIU).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from thaw.cli.output import console, emit_json, friendly

app = typer.Typer(
    name="agent",
    help="The node agent: snapshot and restore as a service (HTTP API on a unix socket, optionally TCP).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

SocketOpt = Annotated[Path | None, typer.Option(
    "--socket", help="unix socket to serve on / talk to [env THAW_AGENT_SOCKET; default: /run/thaw/agent.sock]",
    show_default=False)]
TokenFileOpt = Annotated[Path | None, typer.Option(
    "--token-file", help="serve: bearer tokens accepted over TCP, one per line, optionally 'identity:token'; "
    "status: the file whose first token is sent [env THAW_AGENT_TOKEN_FILE]", show_default=False)]


@app.command()
@friendly
def serve(
    socket: SocketOpt = None,
    no_socket: Annotated[bool, typer.Option("--no-socket", help="serve on TCP only")] = False,
    listen: Annotated[str | None, typer.Option(
        "--listen", help="also serve on TCP HOST:PORT (needs --token-file: without a token every TCP request gets "
        "401) [env THAW_AGENT_LISTEN]", show_default=False)] = None,
    token_file: TokenFileOpt = None,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", help="serve TCP with TLS: the certificate (PEM; e.g. from a Secret) [env THAW_AGENT_TLS_CERT]",
        show_default=False)] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", help="the certificate's private key (PEM) [env THAW_AGENT_TLS_KEY]", show_default=False)] = None,
    plain_tcp: Annotated[bool | None, typer.Option(
        "--plain-tcp", help="serve TCP without TLS on a non-loopback address: only behind something that encrypts "
        "(a service mesh) [env THAW_AGENT_PLAIN_TCP]", show_default=False)] = None,
    socket_group: Annotated[str | None, typer.Option(
        "--socket-group", help="group allowed to use the socket (mode 0660); default: root only (0600)")] = None,
    store: Annotated[str | None, typer.Option(
        "--store", help="artifact store: a (shared) directory, dir:///path or s3://bucket/prefix?endpoint=URL "
        "[env THAW_STORE; default: HOME/artifacts]", show_default=False)] = None,
    staging: Annotated[Path | None, typer.Option(
        "--staging", help="node-local staging for fetched artifacts (tmpfs or local disk) [env THAW_STAGING; "
        "default: HOME/staging]", show_default=False)] = None,
    home: Annotated[Path | None, typer.Option(
        "--home", help="thaw's state directory; the same path on every node [env THAW_HOME; default: /var/lib/thaw]",
        show_default=False)] = None,
    node: Annotated[str | None, typer.Option(
        "--node", help="this node's name [env THAW_NODE; default: hostname]", show_default=False)] = None,
    criu: Annotated[str | None, typer.Option(
        "--criu", help="CRIU binary or portable tree [env THAW_CRIU]", show_default=False)] = None,
    max_jobs: Annotated[int | None, typer.Option(
        "--max-jobs", help="operations run at once [env THAW_AGENT_MAX_JOBS; default: 8]", show_default=False)] = None,
    gms: Annotated[bool | None, typer.Option(
        "--gms/--no-gms", show_default=False, help="run a GPU memory service per GPU: workers map their weights from "
        "it, so weights stay out of every snapshot (docs/gms.md) [env THAW_GMS]")] = None,
    gms_allow: Annotated[list[Path] | None, typer.Option(
        "--gms-allow", help="a directory the GPU memory services may load weights from (repeat); e.g. the model "
        "volume [env THAW_GMS_ALLOW]")] = None,
    thp: Annotated[str | None, typer.Option(
        "--thp", help="set transparent huge pages at start: always (restores fill memory ~2x faster; for dedicated "
        "GPU nodes), madvise or never [env THAW_THP; default: leave the host's]", show_default=False)] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")] = "info",
) -> None:
    """Run the agent until SIGTERM: recover interrupted jobs, then serve the API."""
    from thaw.agent.server import serve as run_server
    from thaw.agent.service import AgentConfig
    from thaw.config import AgentSettings, load, settings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given = {"listen": listen, "token_file": token_file, "socket_group": socket_group, "max_jobs": max_jobs,
             "tls_cert": tls_cert, "tls_key": tls_key, "plain_tcp": plain_tcp}
    listeners = load(AgentSettings, **given)
    if socket is not None:
        listeners.socket = socket
    if no_socket:
        listeners.socket = None
    config = settings(home=home, store=store, staging=staging, node=node, criu=criu, gms=gms,
                      gms_allow=gms_allow or None, thp=thp, agent=listeners)
    console.print(f"thaw agent on [bold]{config.node}[/]: store {config.store_url}, staging "
                  f"{config.staging_dir}" + (f", socket {listeners.socket}" if listeners.socket else "")
                  + (f", tcp {listeners.listen}" if listeners.listen else ""), highlight=False)
    run_server(AgentConfig(settings=config))


@app.command()
@friendly
def status(
    socket: SocketOpt = None,
    url: Annotated[str | None, typer.Option(
        "--url", help="talk over TCP instead: https://HOST:PORT (THAW_AGENT_CA, THAW_AGENT_SERVER_NAME) or "
        "http://HOST:PORT [env THAW_AGENT_URL]", show_default=False)] = None,
    token_file: TokenFileOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Is an agent running here, and what is it doing?"""
    from thaw.api.client import DEFAULT_SOCKET, AgentClient
    from thaw.config import Settings

    config = Settings()
    client_settings = config.client.model_copy(update={k: v for k, v in {"url": url, "token_file": token_file}.items()
                                                        if v is not None})
    if client_settings.url:
        client = AgentClient(base_url=client_settings.url, token=client_settings.bearer(), ca=client_settings.ca,
                             server_name=client_settings.server_name)
    else:
        client = AgentClient(socket or config.agent.socket or DEFAULT_SOCKET)
    with client:
        st = client.status()
        jobs = [j for j in client.jobs(limit=20) if not j.state.finished]
    if json_out:
        emit_json({"status": st.model_dump(mode="json"), "running": [j.model_dump(mode="json") for j in jobs]})
        return
    console.print(f"agent on [bold]{st.node}[/] (pid {st.pid}, thaw {st.version}, up since "
                  f"{st.started_at:%Y-%m-%d %H:%M:%S}Z)", highlight=False)
    console.print(f"store {st.store}; staging {st.staging}; {st.workers_alive} worker(s) alive; "
                  f"{st.jobs_running} job(s) unfinished", highlight=False)
    if st.gpu_error:
        console.print(f"GPUs: cannot be read: {st.gpu_error}", highlight=False)
    for j in jobs:
        phase = j.progress.phase if j.progress else "-"
        console.print(f"  {j.id} {j.kind.value} {j.worker or ''} {j.artifact or ''}: {j.state.value} ({phase})",
                      highlight=False)
