"""Starting a worker in a new sandbox (``thaw run``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from thaw import proc
from thaw.errors import ConfigError, WorkerError
from thaw.model.sandbox import SandboxLayout
from thaw.sandbox.user import hand_over
from thaw.worker import environment, protocol

if TYPE_CHECKING:  # the pod entrypoint runs launch() in the worker's image: standard library only at run time
    from thaw.config import WorkerUser


@dataclass(frozen=True)
class Launched:
    host_pid: int  # the worker: pid 1 of its pid namespace
    pidns: int
    holder_pid: int  # the `unshare` process waiting on it


def launch(argv: list[str], *, control_dir: Path, run_dir: Path, layout: SandboxLayout, env: dict[str, str],
           cwd: Path | None = None, timeout: float = 30.0, worker_env: dict[str, str] | None = None,
           drop_caps: bool = False, user: WorkerUser | None = None) -> Launched:
    """Start ``argv`` as pid 1 of a new sandbox with ``layout``; return once it runs there.

    ``worker_env`` is added to the environment of ``argv`` alone, not of the sandbox's init.
    ``user``: run the worker as that unprivileged user, with no capability (user.py).
    """
    if not argv:
        raise ConfigError("command", "no command given", hint="thaw run --name NAME -- CMD [ARGS...]")
    spec = {
        "keep": layout.keep,
        "private_net": layout.private_net,
        "private_shm": layout.private_shm,
        "run_dir": str(run_dir),
        "control_dir": str(control_dir),
        "log": str(control_dir / protocol.WORKER_LOG),
        "cwd": str(cwd or Path.cwd()),
        "worker_env": dict(worker_env or {}),
        "drop_caps": drop_caps,  # the worker gets no capability (a pod's: sandbox/entrypoint.py)
        "user": user.to_dict() if user else None,
    }
    if user:
        hand_over(control_dir, control_dir / protocol.WORKER_LOG, user.uid, user.gid)
    flags = ["--pid", "--fork", "--mount", "--propagation", "private"] + (["--net"] if layout.private_net else [])
    cmd = ["unshare", *flags, sys.executable, "-m", "thaw.sandbox.init", json.dumps(spec), "--", *argv]
    with open(control_dir / "sandbox.log", "ab") as log:
        holder = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                  cwd=str(cwd or Path.cwd()), start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    child = None
    while time.monotonic() < deadline:
        child = proc.first_child(holder.pid) or child
        if child is not None and _executed(child, holder.pid):
            return Launched(host_pid=child, pidns=proc.ns_inode(child, "pid"), holder_pid=holder.pid)
        if holder.poll() is not None:
            break
        time.sleep(0.005)
    holder.kill()
    holder.wait()
    worker_log = _tail(control_dir / protocol.WORKER_LOG)
    if INIT_CANNOT_EXEC in worker_log:  # the sandbox was fine; the command is not there (or not executable)
        reason = worker_log[worker_log.index(INIT_CANNOT_EXEC):].splitlines()[0]
        raise ConfigError("command", f"cannot start {argv[0]!r}: {reason.rsplit(': ', 1)[-1].strip()}",
                          hint="give the command's full path, or one on PATH, as the sandbox sees the host's files")
    detail = _tail(control_dir / "sandbox.log")
    if child is not None and holder.returncode is not None and not detail.strip():
        # it ran and ended at once (e.g. `true`): a worker that exited, as `thaw ps` will show
        return Launched(host_pid=child, pidns=0, holder_pid=holder.pid)
    raise WorkerError(f"the sandbox for {argv[0]!r} did not start: {detail.strip() or 'no output'}",
                      hint="`thaw doctor` checks that unshare and namespaces work here")


#: what the sandbox's init (init.py) writes to the worker's log when it cannot exec the command
INIT_CANNOT_EXEC = "thaw sandbox: cannot exec"


def _executed(pid: int, holder: int) -> bool:
    """True once the sandbox's init has become the worker (exec'd its command): neither `unshare`'s fork of
    itself nor thaw.sandbox.init any more."""
    try:
        mine, unshare = proc.command_line(pid), proc.command_line(holder)
    except proc.Gone:
        return False
    return bool(mine) and mine != unshare and "thaw.sandbox.init" not in mine


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-800:]
    except OSError:
        return ""


def child_env(base: dict[str, str], *, run_dir: Path, name: str) -> dict[str, str]:
    env = dict(base)
    env[protocol.ENV_RUN_DIR] = str(run_dir)
    env[environment.WORKER_NAME] = name
    env.setdefault("PYTHONUNBUFFERED", "1")
    # CPU torch workers on AMX CPUs die with SIGILL after restore: the kernel does not give a
    # restored task AMX permission back (probe, 2026-11-28). Keep oneDNN off AMX.
    env.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    return env
