"""``quiesce()``: park a warmed worker until thaw decides what happens next.

Call it after warm-up and *before* opening listening sockets or registering with a
control plane, so that nothing live is checkpointed::

    import thaw.worker

    model = load_and_warm_up()
    outcome = thaw.worker.quiesce(name="llm", canary=lambda: model.greedy(PROMPTS))
    if outcome.stopped:
        sys.exit(0)
    serve(model)            # original (released) or restored (thawed) copy alike

While parked the worker holds no file descriptor to thaw: it polls its control
directory (protocol.py). It returns in one of three ways: THAWED (this process was
restored from a snapshot; ``outcome.info`` has the restore id, node and timings),
RELEASED (a snapshot was taken with --leave-running, or thaw released it, or it does
not run under thaw at all) or STOPPED.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from thaw.worker import environment, hooks, protocol
from thaw.worker.protocol import Action, Command

POLL_S = 0.005  # a parked worker re-reads its control directory this often (cheap: one stat, one open)


class Kind(str, Enum):
    THAWED = "thawed"
    RELEASED = "released"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Outcome:
    """How ``quiesce()`` returned."""

    kind: Kind
    #: THAWED: restore id, artifact, node, timings ...; RELEASED: why
    info: dict[str, Any] = field(default_factory=dict)
    #: False when the worker does not run under thaw (quiesce returned at once)
    managed: bool = True

    @property
    def thawed(self) -> bool:
        return self.kind is Kind.THAWED

    @property
    def released(self) -> bool:
        return self.kind is Kind.RELEASED

    @property
    def stopped(self) -> bool:
        return self.kind is Kind.STOPPED


def managed() -> bool:
    """True when this process runs in a thaw sandbox (``thaw run``)."""
    return environment.run_dir() is not None


def control_dir() -> Path | None:
    """This sandbox's control directory (a host path visible inside the sandbox), or None outside thaw.

    Workers put their unix sockets here (e.g. ``control_dir() / "http.sock"``): each
    restored copy gets a directory of its own, reachable from the host at the same path.
    Call it after ``quiesce()`` returns: a restored copy's directory differs from the original's.
    """
    run_dir = environment.run_dir()
    if run_dir is None:
        return None
    try:
        return Path(os.readlink(protocol.ns_link(run_dir, protocol.sandbox_key())))
    except FileNotFoundError:
        return None


def quiesce(
    name: str | None = None,
    *,
    canary: Callable[[], Any] | None = None,
    timeout: float | None = None,
    serves: str | None = None,
) -> Outcome:
    """Announce readiness, park, and return once thaw says how to go on.

    ``canary`` computes a small, deterministic, JSON-serialisable result (e.g. greedy
    token ids for fixed prompts). It runs once here, and its result is stored with the
    snapshot; after a restore it runs again and thaw compares the two before the copy
    takes traffic. ``timeout`` (seconds) bounds the wait; on expiry the worker is
    released. ``serves`` says where the worker will listen once it goes on
    (``tcp://0.0.0.0:8000``, ``unix:///run/app.sock``): thaw replays HTTP canary
    requests there (``thaw snapshot --canary-http``). Outside thaw this returns
    RELEASED at once (``managed=False``).
    """
    run_dir = environment.run_dir()
    if run_dir is None:
        return Outcome(Kind.RELEASED, {"reason": "not running under thaw"}, managed=False)
    return _Parked(run_dir, name or _default_name(), canary, serves).wait(timeout)


class _Parked:
    """The state of a parked worker: which commands it has handled and whether it is frozen."""

    def __init__(self, run_dir: Path, name: str, canary: Callable[[], Any] | None, serves: str | None) -> None:
        self.run_dir = run_dir
        self.name = name
        self.canary = canary
        self.handled: set[str] = set()
        self.frozen = False
        #: what the freeze hooks reported: a FREEZE of a frozen worker (the snapshot before it died) gets it again
        self.freeze_report: dict[str, Any] = {}
        self.pending_thaw: dict[str, Any] | None = None
        #: (dev, inode, mtime) of the command file last read: a poll opens it only when it changed, so
        #: no descriptor of thaw's is ever open while the process is dumped (commands are written by rename)
        self.seen: tuple[int, int, int] | None = None
        ctl = self.control_dir(wait=True)
        # commands already present belong to an earlier life of this sandbox: never act on them
        old = protocol.read_json(ctl / protocol.COMMAND)
        if old:
            self.handled.add(old.get("id", ""))
        recorded = canary() if canary else None
        marker = protocol.ReadyMarker(
            name=name,
            pid=os.getpid(),
            pidns=protocol.pidns_inode(),
            canary=recorded,
            hooks=hooks.registered()["freeze"],
            at=protocol.now(),
            serves=serves,
        )
        protocol.write_json_atomic(ctl / protocol.READY, protocol.encode(marker))

    def control_dir(self, *, wait: bool = False) -> Path:
        """This sandbox's control directory; a restored copy finds a new one under its new pid namespace."""
        key = protocol.sandbox_key()
        while True:
            try:
                return self._linked_dir(key)
            except FileNotFoundError:
                if not wait:
                    raise
                time.sleep(POLL_S)

    def _linked_dir(self, key: str) -> Path:
        return Path(os.readlink(protocol.ns_link(self.run_dir, key)))

    def wait(self, timeout: float | None) -> Outcome:
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            cmd = self._next_command()
            if cmd is None:
                time.sleep(POLL_S)
                continue
            outcome = self._act(cmd)
            if outcome is not None:
                self._unpark()
                return outcome
        if self.frozen:
            hooks.run_thaw(hooks.HookContext(reason="release"))
        self._unpark()
        return Outcome(Kind.RELEASED, {"reason": f"quiesce timed out after {timeout}s"})

    def _unpark(self) -> None:
        # no longer parked: a later quiesce() writes a fresh marker, and thaw must not act on this one
        try:
            os.unlink(self.control_dir() / protocol.READY)
        except FileNotFoundError:
            pass

    def _next_command(self) -> Command | None:
        try:
            key = protocol.sandbox_key()
            ctl = self._linked_dir(key)
        except FileNotFoundError:
            return None  # restored, and thaw has not linked the new sandbox yet
        try:
            st = os.stat(ctl / protocol.COMMAND)
        except FileNotFoundError:
            return None
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if stamp == self.seen:
            return None  # nothing new: opening it now could leave a descriptor in a snapshot being dumped
        raw = protocol.read_json(ctl / protocol.COMMAND)
        # A dump can stop this process anywhere above, and a copy restored from it resumes here with the original's
        # key and directory in hand, where thaw has since told the original RELEASE (--leave-running). A copy that
        # acted on it ran its thaw hooks as a release and answered before thaw linked its own sandbox (it died), or
        # into its own directory (its THAW went unanswered). What was read counts only if this is still the sandbox
        # whose link was followed; if not, the next poll looks again as the copy.
        if protocol.sandbox_key() != key:
            return None
        self.seen = stamp
        if not raw or raw.get("id") in self.handled:
            return None
        self.handled.add(raw["id"])
        return protocol.decode_command(raw)

    def _act(self, cmd: Command) -> Outcome | None:
        """Do what ``cmd`` asks and answer it; how quiesce() returns, or None to stay parked."""
        try:
            outcome, data, canary_out = self._perform(cmd)
        except hooks.HookFailed as exc:
            self._reply(cmd, False, error=str(exc) + "\n" + traceback.format_exc(limit=5))
            return None
        except Exception as exc:  # noqa: BLE001 - the worker must survive anything thaw asks of it
            self._reply(cmd, False, error=f"{type(exc).__name__}: {exc}\n" + traceback.format_exc(limit=5))
            return None
        # unanswered, it stays parked: thaw cannot know what it did, and must not find it serving on its own
        return outcome if self._reply(cmd, True, data=data, canary=canary_out) else None

    def _perform(self, cmd: Command) -> tuple[Outcome | None, dict[str, Any], Any]:
        """(how quiesce() returns once thaw has the answer, or None; the hooks' report; the canary's outputs)."""
        match cmd.action:
            case Action.FREEZE:
                if not self.frozen:
                    self.freeze_report = hooks.run_freeze(hooks.HookContext("snapshot", cmd.info))
                    self.frozen = True
                return None, self.freeze_report, None
            case Action.ABORT:
                return None, self._unfreeze("abort", cmd.info), None
            case Action.RELEASE:
                data = self._unfreeze("release", cmd.info)
                return Outcome(Kind.RELEASED, {"reason": "released by thaw", **cmd.info}), data, None
            case Action.THAW:
                _reopen_inherited_stdio(self.control_dir() / protocol.WORKER_LOG)
                data = self._unfreeze("thaw", cmd.info)
                if not cmd.verify:
                    return Outcome(Kind.THAWED, cmd.info), data, None
                canary_out = self.canary() if self.canary else None
                self.pending_thaw = cmd.info
                return None, data, canary_out
            case Action.GO:
                return Outcome(Kind.THAWED, {**(self.pending_thaw or {}), **cmd.info}), {}, None
            case Action.STOP:
                return Outcome(Kind.STOPPED, cmd.info), {}, None
        raise ValueError(f"unknown action {cmd.action!r}")

    def _unfreeze(self, reason: str, info: dict[str, Any]) -> dict[str, Any]:
        if not self.frozen:
            return {}
        report = hooks.run_thaw(hooks.HookContext(reason, info))
        self.frozen = False
        return report

    def _reply(self, cmd: Command, ok: bool, *, error: str = "", data: dict[str, Any] | None = None,
               canary: Any = None) -> bool:
        """Answer ``cmd`` in this sandbox's control directory; False when it cannot (it says why in its log)."""
        reply = protocol.Reply(id=cmd.id, ok=ok, error=error, data=data or {}, canary=canary, at=protocol.now())
        try:
            protocol.write_json_atomic(self.control_dir() / protocol.REPLY, protocol.encode(reply))
        except OSError as exc:
            # thaw removed this sandbox's link (it gave up on the worker: a failed restore kills it next; gc of a
            # gone instance) or its directory: nobody reads a reply here. Parked, it keeps its state and answers
            # again once linked; dying here left only a traceback in its log.
            print(f"thaw.worker: cannot answer thaw's {cmd.action.value!r} (command {cmd.id}): {exc.strerror or exc}"
                  f"{f': {exc.filename}' if exc.filename else ''}; thaw reads no reply from this worker now, so it "
                  "stays parked until its control directory is linked again or it is stopped",
                  file=sys.stderr, flush=True)
            return False
        return True


def _reopen_inherited_stdio(log: Path) -> None:
    """Reopen stdout/stderr that point at this sandbox's log from inside the sandbox.

    A restore hands the copy its own log through CRIU's inherit_fd, opened by thaw
    outside the sandbox's mount namespace. CRIU cannot dump a descriptor whose mount
    belongs to another namespace ("Can't lookup mount=N for fd=1"), so without this a
    restored copy could not be snapshotted again. Same file, same O_APPEND, new mount.
    """
    try:
        target = os.stat(log)
    except OSError:
        return
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            current = os.fstat(fd)
        except OSError:
            continue
        if (current.st_dev, current.st_ino) != (target.st_dev, target.st_ino):
            continue  # the worker sends its output elsewhere: not ours to touch
        if stream is not None:
            stream.flush()
        new = os.open(log, os.O_WRONLY | os.O_APPEND)
        os.dup2(new, fd)
        os.close(new)


def _default_name() -> str:
    return environment.worker_name() or Path(sys.argv[0] or "worker").stem
