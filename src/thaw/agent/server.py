"""Serving the agent: recover, then answer on a unix socket (default) and optionally TCP, with TLS.

One uvicorn server per listener (the unix socket; TCP, with TLS when a certificate is given),
all in one event loop and on one app, with ``PeerProtocol`` so that each request knows its
transport and peer. SIGTERM/SIGINT stop every listener, let running jobs finish, and remove
the socket file.

TCP serves TLS (``--tls-cert``/``--tls-key``: PEM files, e.g. from a Kubernetes Secret; TLS 1.2
at least). Plain TCP is refused unless on a loopback address or asked for with ``--plain-tcp``
(behind something else that encrypts, e.g. a service mesh): the bearer token must never
cross a network in clear text (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import logging
import os
import signal
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from thaw.agent.auth import PeerProtocol, Tokens
from thaw.agent.service import Agent, AgentConfig
from thaw.config import AgentSettings
from thaw.errors import ConfigError, HostError

log = logging.getLogger("thaw.agent")


def serve(config: AgentConfig) -> None:
    """Run the agent until SIGTERM/SIGINT, listening where ``config.settings.agent`` says."""
    from thaw.agent.api import create_app

    options = config.settings.agent
    tokens = Tokens.load(options.token_file)
    tcp = options.tcp()
    tls = tls_context(options)
    if options.socket is None and tcp is None:
        raise ConfigError("socket", "the agent must listen somewhere", hint="give --socket and/or --listen")
    settings = config.settings
    if settings.thp:
        _set_thp(settings.thp)
    supervisor = None
    if settings.gms:
        from thaw.gms.supervisor import Supervisor

        supervisor = Supervisor(settings.gms_dir, settings.gms_allow, budget_gb=settings.gms_budget_gb,
                                devices=settings.gms_devices or None)
        log.info("GPU memory services for %s", ", ".join(supervisor.start()) or "no GPU")
    agent = Agent(config)
    recovered = agent.start()
    # cuInit costs up to seconds on some hosts: pay it now, not in the first restore's CUDA step
    threading.Thread(target=_warm_cuda, name="cuda-init", daemon=True).start()
    for job in recovered:
        log.warning("job %s (%s) was cut short by a restart: %s", job.id, job.kind.value,
                    job.error.message if job.error else "")
    listeners: list[tuple[socket.socket, ssl.SSLContext | None]] = []
    unix = None
    try:
        if options.socket is not None:
            unix = _unix_socket(options.socket, options.socket_group)
            listeners.append((unix, None))
        if tcp is not None:
            listeners.append((_tcp_socket(*tcp), tls))
        app = create_app(agent, tokens)
        servers = [_server_class()(_ServerConfig(app, context)) for _, context in listeners]
        for server in servers:
            server.group = servers  # a signal stops every listener
        asyncio.run(_serve_all(servers, [sock for sock, _ in listeners]))
    finally:
        for s, _ in listeners:
            s.close()
        if options.socket is not None and unix is not None:
            _remove_own_socket(options.socket, unix)
        agent.close(wait=True)
        if supervisor is not None:
            supervisor.stop()


def _ServerConfig(app: Any, context: ssl.SSLContext | None) -> Any:  # noqa: N802 - a uvicorn.Config
    import uvicorn

    config = uvicorn.Config(app, http=PeerProtocol, ws="none", lifespan="off", log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5)
    config.load()
    config.ssl = context  # our own context (minimum TLS 1.2), not one uvicorn builds from file names
    return config


async def _serve_all(servers: list[Any], sockets: list[socket.socket]) -> None:
    await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in zip(servers, sockets)))


def tls_context(options: AgentSettings) -> ssl.SSLContext | None:
    """The TLS context for TCP, or None for plain TCP (refused off loopback unless ``plain_tcp``)."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ConfigError("tls", "give both --tls-cert and --tls-key", hint="PEM files, e.g. from a Secret")
    tcp = options.tcp()
    if options.tls_cert is None or options.tls_key is None:
        if tcp is not None and not options.plain_tcp and not _loopback(tcp[0]):
            raise ConfigError("listen", f"{options.listen} is not a loopback address, and no TLS certificate "
                              "was given: the bearer token would cross the network in clear text",
                              hint="give --tls-cert and --tls-key (docs/security.md shows how), or "
                              "--plain-tcp behind something that encrypts (a service mesh)")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(options.tls_cert, options.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls", f"cannot use {options.tls_cert} / {options.tls_key}: {exc}",
                          hint="PEM certificate and its unencrypted private key") from exc
    return context


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


THP_KNOB = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _set_thp(mode: str) -> None:
    """Transparent huge pages for the node (dedicated GPU nodes): CRIU fills restored memory ~2x faster with
    "always" (docs/performance.md). A host that refuses keeps its setting, and the agent says so."""
    try:
        THP_KNOB.write_text(mode)
        log.info("transparent huge pages: %s", mode)
    except OSError as exc:
        log.warning("cannot set transparent huge pages to %s (%s); keeping the host's setting", mode, exc)


def _warm_cuda() -> None:
    from thaw.cuda import available
    from thaw.errors import CudaError

    try:
        available()
    except CudaError as exc:  # /v1/status reports it to the operator (gpu_error); the agent serves CPU workers
        log.warning("the NVIDIA driver does not initialise: %s", exc)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        #: the servers of one agent (one per listener): a signal to one stops them all
        group: list[uvicorn.Server] = []

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            for server in self.group or [self]:
                uvicorn.Server.handle_exit(server, sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM after its graceful shutdown, which would kill the process
            # before the agent lets its jobs finish and removes its socket: stop serving, nothing more
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    return Server


def _unix_socket(path: Path, group: str | None) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):  # a typo'd --socket must never cost the user a file
            raise ConfigError("socket", f"{path} exists and is not a socket: refusing to replace it",
                              hint="give --socket a path where nothing is, or remove that file yourself")
        if _answers(path):
            raise HostError(f"another agent is already listening on {path}", hint="stop it, or use --socket")
        path.unlink()  # left behind by a killed agent
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never world-accessible, not even between bind and chmod
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError as exc:
            raise ConfigError("socket-group", f"no group named {group!r}") from exc
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def _remove_own_socket(path: Path, sock: socket.socket) -> None:
    """Remove the socket file this agent bound, unless something else has taken its path since."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode) and sock.family == socket.AF_UNIX:
            path.unlink()
    except FileNotFoundError:
        pass


def _tcp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise HostError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(128)
    return sock


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
