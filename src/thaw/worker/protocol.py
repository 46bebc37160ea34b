"""The control-directory protocol between a parked worker and thaw.

A worker never keeps a file descriptor to thaw open (CRIU would have to dump it, and a
restored copy on another node could not reconnect it). Instead both sides exchange
small JSON files in the worker's *control directory*, each written atomically
(write a temporary file, then ``rename``)::

    <control dir>/
        ready.json      worker → thaw  it reached its quiesce point (ReadyMarker)
        command.json    thaw → worker  what to do next (Command)
        reply.json      worker → thaw  the outcome of the command with the same id (Reply)
        park.json       worker → thaw  a server run with --park-at-listen listened too early (ParkReport)
        worker.log      the worker's stdout and stderr

The worker finds its control directory through ``$THAW_RUN_DIR/ns/<pid-namespace inode>``,
a symlink thaw creates for each sandbox. Restored copies are identical in memory, but
each lives in a new pid namespace, so each finds its own directory.

This module is shared by the worker SDK and the pipeline; it imports only the
standard library (and :mod:`thaw.proc`, which does too).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from thaw import proc
from thaw.worker import environment

#: bumped when the files' meaning changes incompatibly
PROTOCOL_VERSION = 1

READY = "ready.json"
COMMAND = "command.json"
REPLY = "reply.json"
PARK_REPORT = "park.json"
WORKER_LOG = "worker.log"

#: environment variable naming the run directory (holds ``ns/<inode>`` links)
ENV_RUN_DIR = environment.RUN_DIR


class Action(str, Enum):
    """What thaw asks a parked worker to do."""

    FREEZE = "freeze"  # run freeze hooks: a snapshot is about to be taken; stay parked
    ABORT = "abort"  # the snapshot failed or was cancelled: undo the freeze (thaw hooks); stay parked
    RELEASE = "release"  # go on serving: undo the freeze if any, then return RELEASED
    THAW = "thaw"  # you were restored: run thaw hooks (and the canary); see Command.verify
    GO = "go"  # after a verified THAW: return THAWED
    STOP = "stop"  # return STOPPED (the worker should exit)


@dataclass(frozen=True)
class ReadyMarker:
    """Written by the worker when it parks at its quiesce point."""

    name: str
    pid: int  # the worker's pid inside its own pid namespace
    pidns: int  # inode of its pid namespace: names the sandbox
    canary: Any = None  # the canary's outputs recorded at quiesce time, if the worker has one
    hooks: list[str] = field(default_factory=list)
    protocol: int = PROTOCOL_VERSION
    at: float = 0.0
    #: where the worker will serve once it goes on (``tcp://0.0.0.0:8000``, ``unix:///path``): thaw's HTTP canary
    serves: str | None = None


@dataclass(frozen=True)
class ParkReport:
    """Written by the start-up hook of ``thaw run --park-at-listen`` when the server listened before warming up.

    The server was *not* parked (it serves as it would without thaw); thaw refuses to
    wait for it or snapshot it, quoting ``reason``.
    """

    state: str  # "early"
    serves: str  # the address it bound
    reason: str  # why that was too early, e.g. "0.3 s after the process started (the minimum warm-up is 2 s)"
    pid: int = 0  # the process that bound it, inside the sandbox
    at: float = 0.0


@dataclass(frozen=True)
class Command:
    """Written by thaw; the worker acts on each new ``id`` once."""

    id: str
    action: Action
    info: dict[str, Any] = field(default_factory=dict)
    verify: bool = False  # THAW: report the canary and wait for GO before returning
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Reply:
    """Written by the worker after acting on the command with the same id."""

    id: str
    ok: bool
    error: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # what the hooks reported
    canary: Any = None  # THAW with verify: the canary's outputs after restore
    at: float = 0.0


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # readable by the other side: thaw (root) and a worker run as another user (its group owns the directory,
        # which nobody else may enter: sandbox/user.py)
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, default=_jsonable)
        os.rename(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None if there is no such file (yet)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def encode(obj: ReadyMarker | Command | Reply | ParkReport) -> dict[str, Any]:
    return asdict(obj)


def decode_park_report(raw: dict[str, Any]) -> ParkReport:
    return ParkReport(**_known(ParkReport, raw))


def decode_ready(raw: dict[str, Any]) -> ReadyMarker:
    return ReadyMarker(**_known(ReadyMarker, raw))


def decode_command(raw: dict[str, Any]) -> Command:
    fields = _known(Command, raw)
    fields["action"] = Action(fields["action"])
    return Command(**fields)


def decode_reply(raw: dict[str, Any]) -> Reply:
    return Reply(**_known(Reply, raw))


def pidns_inode(pid: int | str = "self") -> int:
    """Inode of the pid namespace of ``pid`` (as seen through this process's /proc)."""
    return proc.ns_inode(pid, "pid")


def sandbox_key(init_pid: int | None = None) -> str:
    """What names a sandbox in ``<run dir>/ns/``: its pid namespace's inode and its network namespace's cookie.

    The kernel reuses namespace inode numbers once a namespace is gone, so the inode alone
    could lead a freshly restored copy to a dead sandbox's directory. A network namespace's
    cookie (SO_NETNS_COOKIE, Linux 5.14) is never reused, and every sandbox has a network
    namespace of its own. (Start times are no good: CRIU restores into a time namespace that
    shifts them.) Inside a sandbox call it without arguments; from the host pass the host
    pid of a process in the sandbox.
    """
    if init_pid is None:
        return f"{pidns_inode()}-{_netns_cookie()}"
    return f"{pidns_inode(init_pid)}-{_netns_cookie_of(init_pid)}"


SO_NETNS_COOKIE = 71
CLONE_NEWNET = 0x40000000


def _netns_cookie() -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            return str(struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0])
        except OSError:  # kernels before 5.14: fall back to the (reusable) inode
            return f"i{proc.ns_inode('self', 'net')}"


def _netns_cookie_of(pid: int) -> str:
    """The cookie of ``pid``'s network namespace, read from a thread that joins it (setns is per thread)."""
    import ctypes
    import threading

    out: dict[str, object] = {}
    fd = os.open(proc.ns_path(pid, "net"), os.O_RDONLY)

    def probe() -> None:
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out["cookie"] = _netns_cookie()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread below
            out["error"] = exc

    try:
        t = threading.Thread(target=probe, name="thaw-netns-cookie")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return str(out["cookie"])


def ns_link(run_dir: Path, key: str) -> Path:
    """Where the symlink from a sandbox (``sandbox_key``) to its control directory lives."""
    return Path(run_dir) / "ns" / str(key)


def link_sandbox(run_dir: Path | str, key: str, control_dir: Path | str) -> None:
    """Point the sandbox ``key`` at ``control_dir``, atomically: a polling worker sees the old link or the new."""
    link = ns_link(Path(run_dir), key)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f"{link.name}.{os.getpid()}.tmp")
    os.symlink(control_dir, tmp)
    os.rename(tmp, link)


def now() -> float:
    return time.time()


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    # ignore fields a newer peer added, so that minor additions stay compatible
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
