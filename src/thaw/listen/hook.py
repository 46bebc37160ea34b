"""Inside the server: park it at its first listening socket, before the bind happens.

Installed at interpreter start by thaw's ``sitecustomize`` (thaw/listen/startup) when
``$THAW_PARK_AT_LISTEN`` is set. It adds a ``sys.addaudithook`` hook that watches the
``socket.bind`` audit event (Python raises it *before* the bind system call, with the
socket and the address). At the bind that matches the spec, in the process that owns
the park, it calls ``thaw.worker.quiesce()`` right there: the server thread stops inside
``bind()``, thaw snapshots the process tree, and once the copy is thawed (or the
original released) the hook returns and the bind proceeds as if nothing had happened —
in a restored copy, inside its fresh network namespace.

Which process parks: the first Python process of the sandbox that loads the hook
claims the park (it writes its pid to ``$THAW_PARK_ROOT``, which its children inherit);
forked and spawned children see another pid there and never park. Servers bind their
public socket in that first process (uvicorn, gunicorn's arbiter, vLLM's and SGLang's
API server), after their engine children are up.

The socket being bound exists already (``socket()`` came before ``bind()``), and CRIU
4.1 cannot dump an AF_INET/AF_INET6 socket on Linux 6.16 and later at all: it reads
SO_PASSCRED, which those kernels refuse on inet sockets ("Can't get 1:16 opt: Operation
not supported"). So while parked the socket is stashed: its descriptor number is
pointed at /dev/null (``dup2``, atomic: no other thread can take the number) and its
options are kept; after the park a new socket of the same family, type and protocol,
with the same options and status flags, takes the number again. The server's socket
object never notices, and a restored copy binds a socket of its own.

A matching bind that comes before warm-up (sooner than ``min_warmup_s`` after start,
or before any process of the sandbox holds a GPU) is not parked: the report goes to
``park.json`` in the control directory, the server goes on unparked, and thaw refuses
to snapshot it (``thaw run --wait`` / ``thaw snapshot`` quote the reason).

Standard library only (and thaw's own stdlib-only modules): this runs in every Python
process the server starts.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading
import time
from typing import Any

from thaw.listen.spec import ENV_KEEP_UVLOOP, ENV_ROOT, ENV_SPEC, ParkAtListen, describe
from thaw.worker import protocol

_GPU_DEVICE = "/dev/nvidiactl"


class _Hook:
    """The state of the park in this process."""

    def __init__(self, spec: ParkAtListen, root_pid: int) -> None:
        self.spec = spec
        self.root_pid = root_pid
        self.started = time.monotonic()
        self.seen = 0  # matching binds so far
        self.done = False
        self.lock = threading.Lock()  # held while parked: another thread's matching bind waits for the park
        self.local = threading.local()

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "socket.bind" or self.done or os.getpid() != self.root_pid:
            return
        if getattr(self.local, "busy", False):
            return  # a bind made by the park itself
        sock, address = args
        try:
            family, kind = sock.family, sock.type
        except Exception:  # noqa: BLE001 - a closed or odd socket object: not ours to judge
            return
        if not self.spec.matches(family, kind, address):
            return
        self.local.busy = True
        try:
            with self.lock:
                if self.done:
                    return
                self.seen += 1
                if self.seen < self.spec.nth:
                    return
                self.done = True
                self._park(sock, describe(family, address))
        except Exception as exc:  # noqa: BLE001 - an audit hook that raises would fail the server's bind
            _say(f"the park at listen failed, the server goes on unparked: {type(exc).__name__}: {exc}")
        finally:
            self.local.busy = False

    def _park(self, sock: socket.socket, serves: str) -> None:
        early = self._too_early()
        if early:
            _report_early(serves, early)
            return
        _say(f"parked at the bind of {serves} (pid {os.getpid()}); waiting for thaw")
        _install_torch_hooks()
        from thaw.worker import quiesce  # noqa: PLC0415 - after the early check: the SDK is imported only to park

        stash = Stash(sock) if sock.family in (socket.AF_INET, socket.AF_INET6) else None
        try:
            outcome = quiesce(serves=serves)
        finally:
            if stash is not None:
                stash.put_back()
        os.environ.pop(ENV_SPEC, None)  # processes the server starts from now on load no hook
        if outcome.stopped:
            _say("stopped by thaw")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # inside bind(): an exception could be caught by the server and ignored
        _say(f"{outcome.kind.value}: the bind of {serves} goes on")

    def _too_early(self) -> str:
        age = time.monotonic() - self.started
        if age < self.spec.min_warmup_s:
            return (f"{age:.1f} s after the process started (the minimum warm-up is "
                    f"{self.spec.min_warmup_s:g} s: --park-min-warmup)")
        if _expects_gpu(self.spec.expect_gpu) and not _sandbox_holds_gpu():
            return ("before any process of the worker holds a GPU (no CUDA context exists yet; "
                    "--park-expect-gpu no for a server that runs on the CPU)")
        return ""


#: socket options a server sets before it binds, copied onto the socket that replaces the stashed one
_OPTIONS = [(socket.SOL_SOCKET, socket.SO_REUSEADDR), (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            (socket.IPPROTO_TCP, socket.TCP_NODELAY)]
if hasattr(socket, "SO_REUSEPORT"):
    _OPTIONS.append((socket.SOL_SOCKET, socket.SO_REUSEPORT))
_OPTIONS_V6 = [(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)]


class Stash:
    """An unbound inet socket taken out of the process while it is parked, and put back (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self.fd = sock.fileno()
        self.family, self.kind, self.proto = sock.family, sock.type, sock.proto
        wanted = _OPTIONS + (_OPTIONS_V6 if self.family == socket.AF_INET6 else [])
        self.options = {}
        for level, name in wanted:
            try:
                self.options[(level, name)] = sock.getsockopt(level, name)
            except OSError:
                continue  # not an option of this protocol
        self.status = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        self.inheritable = os.get_inheritable(self.fd)
        placeholder = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.dup2(placeholder, self.fd, inheritable=self.inheritable)  # closes the socket; the number stays taken
        finally:
            os.close(placeholder)

    def put_back(self) -> None:
        fresh = socket.socket(self.family, self.kind, self.proto)
        try:
            for (level, name), value in self.options.items():
                if fresh.getsockopt(level, name) != value:
                    fresh.setsockopt(level, name, value)
            fcntl.fcntl(fresh.fileno(), fcntl.F_SETFL, self.status)
            os.dup2(fresh.fileno(), self.fd, inheritable=self.inheritable)
        finally:
            fresh.close()


def install_from_env() -> bool:
    """Install the hook when ``$THAW_PARK_AT_LISTEN`` asks for it; claim the park if no process has.

    True if installed."""
    raw = os.environ.get(ENV_SPEC)
    if not raw:
        return False
    try:
        spec = ParkAtListen.from_env(raw)
    except (TypeError, ValueError) as exc:
        _say(f"not parking: {exc}")
        return False
    claimed = os.environ.get(ENV_ROOT, "")
    if not claimed.isdigit():
        claimed = str(os.getpid())
        os.environ[ENV_ROOT] = claimed  # inherited by every process this one starts
    sys.addaudithook(_Hook(spec, int(claimed)))
    if os.environ.get(ENV_KEEP_UVLOOP) != "1":
        sys.meta_path.insert(0, _NoUvloop())
    return True


class _NoUvloop:
    """Makes ``import uvloop`` fail, so that servers that prefer it (uvicorn's ``--loop auto``) use asyncio's loop.

    uvloop's libuv (>= 1.45) sets up an io_uring when its loop starts, and CRIU cannot snapshot an
    io_uring: the dump fails after the freeze. ``UV_USE_IO_URING=0`` does not prevent the ring
    (uvloop 0.23, seen on the GPU machine). Every server that falls back to asyncio when uvloop
    is missing keeps working; ``THAW_PARK_KEEP_UVLOOP=1`` turns this off.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "uvloop" or name.startswith("uvloop."):
            raise ImportError(f"thaw keeps {name} out of a server parked at listen: its io_uring cannot be "
                              f"snapshotted by CRIU (set {ENV_KEEP_UVLOOP}=1 to allow it)", name=name)
        return None


def _install_torch_hooks() -> None:
    # the server registered no freeze hooks: thaw's torch hook syncs the GPU, empties torch's cache and
    # shuts inductor's compile pool down (thaw.cuda.worker_hooks). Only where torch is already loaded.
    if "torch" in sys.modules:
        from thaw.cuda import worker_hooks  # noqa: PLC0415

        worker_hooks.install()


def _expects_gpu(setting: str) -> bool:
    if setting != "auto":
        return setting == "yes"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return os.path.exists(_GPU_DEVICE) and visible not in ("", "-1")


def _sandbox_holds_gpu() -> bool:
    # the sandbox has a /proc of its own pid namespace: every process listed is the worker's
    from thaw import proc  # noqa: PLC0415
    from thaw.cuda import process  # noqa: PLC0415 - /proc only; libcuda is never loaded here
    from thaw.errors import ThawError  # noqa: PLC0415

    for pid in proc.pids():
        try:
            if process.process_uses_gpu(pid):
                return True
        except ThawError:
            continue  # gone, or not ours to read
    return False


def _report_early(serves: str, reason: str) -> None:
    _say(f"the server listens on {serves} {reason}: thaw did not park it and will not snapshot it cold")
    from thaw.worker import control_dir  # noqa: PLC0415

    ctl = control_dir()
    if ctl is None:
        return
    report = protocol.ParkReport(state="early", serves=serves, reason=reason, pid=os.getpid(), at=protocol.now())
    protocol.write_json_atomic(ctl / protocol.PARK_REPORT, protocol.encode(report))


def _say(message: str) -> None:
    try:
        print(f"thaw: {message}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001,S110 - stderr closed: nothing to tell
        pass
