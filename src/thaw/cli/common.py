"""What every ``thaw`` command shares: the options that pick settings and route, and the one way to get Operations.

Every option's default comes from the environment through thaw.config.Settings (``THAW_HOME``,
``THAW_STORE``, ``THAW_AGENT``, ...); an option given on the command line wins.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from thaw.config import ClientSettings, Settings, load
from thaw.errors import ConfigError
from thaw.model import GpuTarget, parse_gpu_target
from thaw.ops import Operations, connect

HomeOpt = Annotated[Path | None, typer.Option(
    "--home", help="thaw's state directory, the same path on every node [env THAW_HOME; default: /var/lib/thaw]",
    show_default=False)]
StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="artifact store: a directory, dir:///path or s3://bucket/prefix [env THAW_STORE; "
    "default: HOME/artifacts]", show_default=False)]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="print machine-readable JSON (the same with or without an agent)")]
AgentOpt = Annotated[str | None, typer.Option(
    "--agent", help="go through this node agent: a unix socket path, or https://HOST:PORT ($THAW_AGENT_TOKEN, "
    "$THAW_AGENT_CA, $THAW_AGENT_SERVER_NAME) [env THAW_AGENT; default: /run/thaw/agent.sock when an agent "
    "serves it]", show_default=False)]
LocalOpt = Annotated[bool, typer.Option("--local", help="run in this process even when an agent runs")]


def gpu_option(value: str | None) -> GpuTarget | None:
    """``--gpu``, parsed once into an index or a normalized UUID (ConfigError names the option otherwise)."""
    return None if value is None else parse_gpu_target(value)


GpuOpt = Annotated[str | None, typer.Option(
    "--gpu", help="restore onto this GPU (index or UUID) [default: the recorded one]", show_default=False)]


def settings(home: Path | None = None, store: str | None = None, agent: str | None = None) -> Settings:
    """Settings from the environment, with the options that were given on top."""
    client = load(ClientSettings, address=agent) if agent is not None else None
    return load(Settings, home=home, store=store, client=client)


def operations(home: Path | None = None, store: str | None = None, agent: str | None = None,
               local: bool = False) -> Operations:
    """The one route of every command: through the node agent when one runs, else in this process."""
    return connect(settings(home, store, agent), local=local)


def duration(text: str, *, option: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` → seconds (ConfigError names ``option`` otherwise)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ConfigError(option, f"{text!r} is not a duration", hint="e.g. 3600, 90m, 24h or 7d") from None
    if value < 0 or value != value or value == float("inf"):
        raise ConfigError(option, f"{text!r} is not a duration", hint="e.g. 3600, 90m, 24h or 7d")
    return value


@contextmanager
def unwind_on_sigterm() -> Iterator[None]:
    """Make SIGTERM (kill, systemd, kubelet) unwind like Ctrl-C: a half-done restore then kills what it restored,
    and a half-done snapshot rolls the worker back, instead of dying with the work half done."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
