"""Talking to CRIU through its RPC (``criu swrk``), the way pycriu does.

Each request starts a ``criu swrk`` child on one end of a SOCK_SEQPACKET socketpair
and sends one protobuf request; options are protobuf fields, not flag strings. A
failed request raises CriuError with CRIU's own message (``cr_errmsg``) and the tail
of its log, minus lines known to be harmless.

File descriptors in options (``images_dir_fd``, ``work_dir_fd``) are this process's:
CRIU opens them through /proc/<our pid>/fd. ``inherit_fd`` descriptors must exist in
the swrk process, so they are passed down with ``pass_fds``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thaw import faults
from thaw.criu import messages
from thaw.criu.locate import Criu, find_criu
from thaw.errors import CriuError

# Lines every CRIU log carries that do not mean anything went wrong (probe, 2026-11-28):
# RLIMIT_NOFILE cannot be raised in user namespaces / containers; the late-stage plugin
# hook fails when no CUDA plugin is installed (thaw drives the driver API itself).
HARMLESS = (
    "Can't setup RLIMIT_NOFILE",
    "restore late stage hook for external plugin failed",
    "Can't keep kdat cache on non-tempfs",
)

# Errors whose cause thaw knows, and what to do about them (CriuError's hint)
KNOWN_CAUSES = (
    # Linux 6.16 refuses SO_PASSCRED/SO_PASSSEC on inet sockets; CRIU 4.1 reads both from every socket it dumps
    # (checkpoint-restore/criu#2705, fixed after 4.1)
    ("Can't get 1:16 opt", "this CRIU cannot dump a TCP or UDP socket on Linux >= 6.16 (criu#2705): the worker "
     "must hold none when it is snapshotted: no listening socket before it parks (--park-at-listen stashes the one "
     "it parks at), no connection to another service left open, no torch.distributed TCP store"),
    ("No space left on device", "the artifact store or its staging is full: free space there, or snapshot to "
     "another store (--store); nothing was published and the worker is parked as before"),
)


@dataclass
class DumpOptions:
    pid: int
    images_dir: Path
    work_dir: Path
    leave_running: bool = False
    external: list[str] = field(default_factory=list)
    timeout_s: int = 120
    #: a file that is open but no longer reachable by its path while another link to it exists: a POSIX
    #: semaphore of a multiprocessing "spawn" context (glibc creates it as sem.XXXXXX, links it to its name and
    #: unlinks the first; the name stays while the semaphore may be shared). CRIU links it back under
    #: link_remap.N for the dump ("Can't create link remap ... Use link-remap option" otherwise); in the
    #: sandbox's own /dev/shm that link is dumped with the tmpfs, and CRIU removes it after a leave-running dump
    link_remap: bool = True


@dataclass
class RestoreOptions:
    images_dir: Path
    work_dir: Path
    root: str = "/"
    external: list[str] = field(default_factory=list)
    join_ns: list[tuple[str, str]] = field(default_factory=list)  # (ns, file)
    inherit_fds: dict[str, int] = field(default_factory=dict)  # key -> fd in this process
    timeout_s: int = 300
    #: a command CRIU runs under (it execs CRIU in the end), e.g. to start CRIU inside a pod's cgroup
    #: so that the tree it restores is born there (thaw.sandbox.incgroup)
    wrapper: list[str] = field(default_factory=list)


def dump(opts: DumpOptions, *, criu: Criu | None = None, log_name: str = "dump.log") -> float:
    """Dump the process tree rooted at ``opts.pid``; returns seconds taken."""
    req = messages.Request(type=messages.DUMP)
    o = req.opts
    o.pid = opts.pid
    o.leave_running = opts.leave_running
    o.link_remap = opts.link_remap
    o.external.extend(opts.external)
    o.timeout = opts.timeout_s
    with _dirs(opts.images_dir, opts.work_dir) as (img_fd, work_fd):
        _common(o, img_fd, work_fd, log_name)
        t0 = time.perf_counter()
        _call(req, "dump", opts.work_dir / log_name, criu=criu, timeout=opts.timeout_s + 30)
        return time.perf_counter() - t0


def restore(opts: RestoreOptions, *, criu: Criu | None = None, log_name: str = "restore.log") -> tuple[int, float]:
    """Restore the tree in ``opts.images_dir``, detached and re-parented to us; returns (host pid, seconds)."""
    req = messages.Request(type=messages.RESTORE)
    o = req.opts
    o.root = opts.root
    o.rst_sibling = True  # the restored root becomes our child: we can wait for it and reap it
    o.external.extend(opts.external)
    for ns, path in opts.join_ns:
        o.join_ns.add(ns=ns, ns_file=path)
    for key, fd in opts.inherit_fds.items():
        o.inherit_fd.add(key=key, fd=fd)
    o.timeout = opts.timeout_s
    with _dirs(opts.images_dir, opts.work_dir) as (img_fd, work_fd):
        _common(o, img_fd, work_fd, log_name)
        t0 = time.perf_counter()
        resp = _call(req, "restore", opts.work_dir / log_name, criu=criu, timeout=opts.timeout_s + 30,
                     pass_fds=tuple(opts.inherit_fds.values()), wrapper=opts.wrapper)
        return resp.restore.pid, time.perf_counter() - t0


def check(work_dir: Path, *, criu: Criu | None = None) -> None:
    """CRIU's own host check (``criu check`` over RPC); raises CriuError if the host cannot checkpoint."""
    req = messages.Request(type=messages.CHECK)
    with _dirs(work_dir, work_dir) as (img_fd, work_fd):
        _common(req.opts, img_fd, work_fd, "check.log")
        _call(req, "check", work_dir / "check.log", criu=criu, timeout=60)


def _common(o: Any, img_fd: int, work_fd: int, log_name: str) -> None:
    o.images_dir_fd = img_fd
    o.work_dir_fd = work_fd
    o.log_file = log_name
    o.log_level = 4
    # cgroups belong to the node (kubelet, systemd), not to the snapshot: never dump or recreate them
    o.manage_cgroups_mode = messages.CG_IGNORE
    o.file_locks = True
    # The sandbox's network namespace is external and holds no live connections at the quiesce
    # point, so there is nothing to lock; locking would need iptables-restore on the host.
    o.network_lock = messages.NETWORK_LOCK_SKIP


class _dirs:
    def __init__(self, images: Path, work: Path) -> None:
        self.paths = (images, work)
        self.fds: list[int] = []

    def __enter__(self) -> tuple[int, int]:
        for p in self.paths:
            Path(p).mkdir(parents=True, exist_ok=True)
            self.fds.append(os.open(p, os.O_DIRECTORY | os.O_RDONLY))
        return self.fds[0], self.fds[1]

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)


def _call(req: Any, operation: str, log: Path | None, *, criu: Criu | None, timeout: float,
          pass_fds: tuple[int, ...] = (), wrapper: list[str] | None = None) -> Any:
    criu = criu or find_criu()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            [*(wrapper or []), *criu.argv, "swrk", str(theirs.fileno())],
            pass_fds=(theirs.fileno(), *pass_fds),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # its own process group: a signal to our group (Ctrl-C) must not kill CRIU halfway
            start_new_session=True,
        )
    except OSError as exc:
        ours.close()
        theirs.close()
        raise CriuError(operation, f"cannot start {criu.argv[-1]}: {exc}") from exc
    theirs.close()
    try:
        ours.settimeout(timeout)
        ours.send(req.SerializeToString())
        # CRIU at work (its log started: it holds its directories): what a crash now leaves is tested
        faults.point(f"criu.{operation}", child=proc.pid, once=lambda: log is None or log.exists())
        try:
            data = ours.recv(1 << 20)
        except ConnectionResetError:  # CRIU (or the wrapper it runs under) died or exited without a word
            data = b""
        except TimeoutError as exc:
            proc.kill()
            raise CriuError(operation, f"no answer within {timeout:.0f}s", log_tail=log_tail(log)) from exc
        if not data:
            stderr = proc.communicate(timeout=10)[1].decode(errors="replace")
            raise CriuError(operation, f"criu exited without answering: {stderr.strip()[-500:]}",
                            log_tail=log_tail(log))
        resp = messages.Response()
        resp.ParseFromString(data)
        if not resp.success:
            msg = resp.cr_errmsg
            # CRIU's message is its first error (often the harmless RLIMIT line), a generic
            # "Dumping FAILED." or nothing at all (`criu check`); the first real error line of
            # its log says what went wrong
            if not msg or any(h in msg for h in HARMLESS) or msg.rstrip(".").endswith("FAILED"):
                msg = first_error(log) or msg
            if not msg:  # no log either (CRIU could not open it, e.g. without /proc): what it printed
                ours.close()  # swrk serves until its socket closes
                msg = _first_error_line(proc.communicate(timeout=10)[1].decode(errors="replace"))
            msg = msg or "(no message)"
            error = CriuError(operation, msg, errno=resp.cr_errno, log_tail=log_tail(log))
            error.hint = explain(msg)
            raise error
        return resp
    finally:
        ours.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def explain(message: str) -> str | None:
    """What to do about a CRIU error thaw knows the cause of (KNOWN_CAUSES), else None."""
    return next((hint for pattern, hint in KNOWN_CAUSES if pattern in message), None)


def first_error(log: Path | None) -> str:
    """The first error line of a CRIU log that is neither harmless nor a generic 'FAILED', without its prefix."""
    return _first_error_line(log_tail(log, lines=1000))


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if "Error" in line and "FAILED" not in line and not any(h in line for h in HARMLESS):
            return line.split("): ", 1)[-1].strip()
    return ""


def log_tail(log: Path | None, lines: int = 25) -> str:
    """The last error-bearing lines of a CRIU log, harmless lines removed."""
    if log is None:
        return ""
    try:
        text = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    useful = [line for line in text if not any(h in line for h in HARMLESS)]
    errors = [line for line in useful if "Error" in line or "error" in line]
    return "\n".join((errors or useful)[-lines:])
