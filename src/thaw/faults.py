"""Fault injection at named points of thaw's operations, for the fault-matrix tests (tests/faults/).

A point is a place where a crash or an error must leave nothing behind: the start of
every phase of a snapshot or restore (``snapshot.dump``, ``restore.criu_restore``, ...,
called by pipeline/phases.py), the instant CRIU is working for us (``criu.dump``,
``criu.restore``: the request sent, the answer not yet read), and the store's publish
and fetch steps. ``THAW_FAULT`` names what happens where, as ``POINT:ACTION`` pairs
separated by commas::

    THAW_FAULT=snapshot.dump:kill          SIGKILL this process when the dump phase starts
    THAW_FAULT=criu.dump:kill-child        SIGKILL CRIU while it dumps (a CRIU failure)
    THAW_FAULT=store.publish:enospc        the publish fails as on a full disk
    THAW_FAULT=restore.thaw_hooks:fail     a ThawError at the start of the thaw-hooks phase

Actions: ``kill`` (SIGKILL this process: no unwinding, as an OOM kill or a node agent
killed mid-job), ``kill-child`` (SIGKILL the child process the point names, i.e. CRIU),
``fail`` (raise InjectedFault, a ThawError), ``enospc`` / ``eio`` (raise that OSError).
Nothing happens when the variable is unset, so a point costs one dictionary lookup.

The variable is read here and nowhere else, on purpose: the fault matrix starts real
``thaw`` and ``thaw agent`` processes and must reach points deep inside them, where no
setting is passed (docs/security.md, "Proving it"). Standard library only.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable

from thaw.errors import InjectedFault

ENV = "THAW_FAULT"
ACTIONS = ("kill", "kill-child", "fail", "enospc", "eio")


def point(name: str, *, child: int | None = None, once: Callable[[], bool] | None = None) -> None:
    """Act as ``THAW_FAULT`` says for the point ``name`` (``child``: a process the point runs, e.g. CRIU).

    ``once``: the point is reached when this turns true (polled for up to 30 s), e.g. once CRIU has
    opened the directories it was given and started its log: a fault before that tests nothing more.
    """
    spec = os.environ.get(ENV)
    if not spec:
        return
    action = _actions(spec).get(name)
    if action is None:
        return
    deadline = time.monotonic() + 30
    while once is not None and not once() and time.monotonic() < deadline:
        time.sleep(0.001)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "kill-child":
        if child is None:
            raise InjectedFault(f"fault point {name} has no child process to kill")
        os.kill(child, signal.SIGKILL)
    elif action == "fail":
        raise InjectedFault(f"injected failure at {name} ({ENV})")
    elif action in ("enospc", "eio"):
        code = errno.ENOSPC if action == "enospc" else errno.EIO
        raise OSError(code, f"{os.strerror(code)} (injected at {name})")


def _actions(spec: str) -> dict[str, str]:
    out = {}
    for item in spec.split(","):
        where, _, action = item.strip().rpartition(":")
        if where and action in ACTIONS:
            out[where] = action
    return out
