"""Who wrote a staging entry, and whether it is still at work: names that carry their owner.

Every directory thaw stages into (a store's ``.staging``, the node's fetch staging, the
scratch directory of uploads) is named ``<owner>.<rest>``, the owner being
``<boot>-<pid>-<start>``: the first 8 hex digits of this boot's id, the process id, and
its start time in clock ticks. A crash (SIGKILL, OOM, a node that lost power) leaves the
entry behind; a later ``thaw`` or agent on this node can tell, from the name alone and
without any record, that its owner is gone:

* ``alive``: the owner runs (same boot, that pid, that start time);
* ``dead``: it does not, and no process has a file under the entry open (CRIU outlives
  the thaw that started it and writes on: the entry is still in use until CRIU exits);
* ``foreign``: written in another boot or on another node (a shared volume): nothing
  here can tell; only an age rule may remove it (``thaw gc --older-than``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Literal

from thaw import proc

_OWNER = re.compile(r"^(?P<boot>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<start>[0-9]+)\.")

State = Literal["alive", "dead", "foreign", "held"]


def tag(pid: int | None = None) -> str:
    """The owner prefix for entries this process (or ``pid``) creates."""
    pid = pid or os.getpid()
    return f"{_boot()}-{pid}-{proc.start_ticks(pid)}"


def state(entry: Path) -> State | None:
    """What the owner named in ``entry``'s name is doing now; None when the name carries no owner."""
    m = _OWNER.match(entry.name)
    if m is None:
        return None
    if m["boot"] != _boot():
        return "foreign"
    pid, start = int(m["pid"]), int(m["start"])
    try:
        if proc.start_ticks(pid) == start and not proc.zombie(pid):
            return "alive"
    except proc.Gone:
        pass
    return "held" if holders(entry) else "dead"


def abandoned(entry: Path, older_than_s: float | None = None) -> bool:
    """True when ``entry``'s writer is gone: its owner dead, or (owner unknown) older than ``older_than_s``."""
    found = state(entry)
    if found == "dead":
        return True
    if found in ("alive", "held") or older_than_s is None:
        return False
    try:
        age = time.time() - entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age >= older_than_s and not holders(entry)


def sweep(directory: Path, older_than_s: float | None = None) -> list[str]:
    """Remove the entries of ``directory`` (node-local staging) that are ``abandoned``; dot-entries are left alone."""
    gone: list[str] = []
    try:
        entries = sorted(Path(directory).iterdir())
    except FileNotFoundError:
        return gone
    for entry in entries:
        if entry.name.startswith(".") or not abandoned(entry, older_than_s):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        gone.append(entry.name)
    return gone


def holders(directory: Path) -> list[int]:
    """Processes with a file (or their working directory) under ``directory``."""
    return proc.holders(directory, cwd=True)


def _boot() -> str:
    return proc.boot_id().replace("-", "")[:8]
