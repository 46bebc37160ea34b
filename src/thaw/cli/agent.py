"""``thaw agent``: run the node agent, or ask one how it is.

    thaw agent serve --store s3://artifacts/prod --staging /mnt/nvme/thaw-staging
    thaw agent status
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

SocketOpt = Annotated[Path, typer.Option("--socket", envvar="THAW_AGENT_SOCKET", help="unix socket to serve on / talk to")]


@app.command()
@friendly
def serve(
    socket: SocketOpt = Path("/run/thaw/agent.sock"),
    no_socket: Annotated[bool, typer.Option("--no-socket", help="serve on TCP only")] = False,
    listen: Annotated[str | None, typer.Option("--listen", envvar="THAW_AGENT_LISTEN", help="also serve on TCP HOST:PORT (needs --token-file: without a token every TCP request gets 401)")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", envvar="THAW_AGENT_TOKEN_FILE", help="bearer tokens accepted over TCP, one per line, optionally 'identity:token'")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", envvar="THAW_AGENT_TLS_CERT", help="serve TCP with TLS: the certificate (PEM; e.g. from a Secret)")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", envvar="THAW_AGENT_TLS_KEY", help="the certificate's private key (PEM)")] = None,
    plain_tcp: Annotated[bool, typer.Option("--plain-tcp", help="serve TCP without TLS on a non-loopback address: only behind something that encrypts (a service mesh)")] = False,
    socket_group: Annotated[str | None, typer.Option("--socket-group", help="group allowed to use the socket (mode 0660); default: root only (0600)")] = None,
    store: Annotated[str | None, typer.Option("--store", envvar="THAW_STORE", help="artifact store: a (shared) directory, dir:///path or s3://bucket/prefix?endpoint=URL [default: HOME/artifacts]")] = None,
    staging: Annotated[Path | None, typer.Option("--staging", envvar="THAW_STAGING", help="node-local staging for fetched artifacts (tmpfs or local disk) [default: HOME/staging]")] = None,
    home: Annotated[Path | None, typer.Option("--home", envvar="THAW_HOME", help="thaw's state directory; the same path on every node [default: /var/lib/thaw]")] = None,
    node: Annotated[str | None, typer.Option("--node", envvar="THAW_NODE", help="this node's name [default: hostname]")] = None,
    criu: Annotated[str | None, typer.Option("--criu", envvar="THAW_CRIU", help="CRIU binary or portable tree")] = None,
    max_jobs: Annotated[int, typer.Option("--max-jobs", help="operations run at once")] = 8,
    gms: Annotated[bool | None, typer.Option("--gms/--no-gms", envvar="THAW_GMS", show_default=False, help="run a GPU memory service per GPU: workers map their weights from it, so weights stay out of every snapshot (docs/gms.md)")] = None,
    gms_allow: Annotated[list[Path] | None, typer.Option("--gms-allow", help="a directory the GPU memory services may load weights from (repeat); e.g. the model volume")] = None,
    thp: Annotated[str | None, typer.Option("--thp", envvar="THAW_THP", help="set transparent huge pages at start: always (restores fill memory ~2x faster; for dedicated GPU nodes), madvise or never [default: leave the host's]")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")] = "info",
) -> None:
    """Run the agent until SIGTERM: recover interrupted jobs, then serve the API."""
    from thaw.agent.server import ServeOptions
    from thaw.agent.server import serve as run_server
    from thaw.agent.service import AgentConfig
    from thaw.config import Settings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in {"home": home, "store": store, "staging": staging, "node": node,
                                   "criu": criu, "gms": gms, "gms_allow": gms_allow or None,
                                   "thp": thp}.items() if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    options = ServeOptions(socket=None if no_socket else socket, listen=listen, token_file=token_file,
                           socket_group=socket_group, tls_cert=tls_cert, tls_key=tls_key, plain_tcp=plain_tcp)
    console.print(f"thaw agent on [bold]{settings.node}[/]: store {settings.store_url}, staging "
                  f"{settings.staging_dir}" + (f", socket {socket}" if not no_socket else "")
                  + (f", tcp {listen}" if listen else ""), highlight=False)
    run_server(AgentConfig(settings=settings, max_jobs=max_jobs), options)


@app.command()
@friendly
def status(
    socket: SocketOpt = Path("/run/thaw/agent.sock"),
    url: Annotated[str | None, typer.Option("--url", envvar="THAW_AGENT_URL", help="talk over TCP instead: http://HOST:PORT")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", envvar="THAW_AGENT_TOKEN_FILE", help="file whose first token is sent over TCP")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Is an agent running here, and what is it doing?"""
    from thaw.agent.client import AgentClient

    token = _first_token(token_file) if token_file else None
    with (AgentClient(base_url=url, token=token) if url else AgentClient(socket)) as client:
        st = client.status()
        jobs = [j for j in client.jobs(limit=20) if not j.state.finished]
    if json_out:
        emit_json({"status": st.model_dump(mode="json"), "running": [j.model_dump(mode="json") for j in jobs]})
        return
    console.print(f"agent on [bold]{st.node}[/] (pid {st.pid}, thaw {st.version}, up since "
                  f"{st.started_at:%Y-%m-%d %H:%M:%S}Z)", highlight=False)
    console.print(f"store {st.store}; staging {st.staging}; {st.workers_alive} worker(s) alive; "
                  f"{st.jobs_running} job(s) unfinished", highlight=False)
    for j in jobs:
        phase = j.progress.phase if j.progress else "-"
        console.print(f"  {j.id} {j.kind.value} {j.worker or ''} {j.artifact or ''}: {j.state.value} ({phase})",
                      highlight=False)


def _first_token(path: Path) -> str:
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.partition(":")[2].strip() if ":" in line else line
    raise FileNotFoundError(f"no token in {path}")


