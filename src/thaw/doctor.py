"""Host checks: can this node snapshot and restore workers? Each failed check says how to fix it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from thaw import proc
from thaw.config import Settings
from thaw.criu.locate import FAST_TREE, Criu
from thaw.errors import ThawError

MIN_DRIVER = 580
PROC_FIX = "mount it: mount -t proc proc /proc (in a chroot: mount /proc, /sys and /dev inside it before entering)"
# capabilities CRIU needs to dump and restore other processes (capability(7) bit numbers)
CAPS = {"CAP_SYS_ADMIN": 21, "CAP_SYS_PTRACE": 19, "CAP_NET_ADMIN": 12, "CAP_CHECKPOINT_RESTORE": 40}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def run_checks(settings: Settings) -> list[Check]:
    return [_root(), _caps(), _kernel(), _root_dir(), _unshare(), *_criu(settings), _worker_user(settings),
            _compiler(), _python_headers(), _store(settings), _thp(), _nvidia()]


def _worker_user(settings: Settings) -> Check:
    """Workers as an unprivileged user (THAW_WORKER_USER): CRIU then needs CAP_SYS_RESOURCE (sandbox/user.py)."""
    from thaw.sandbox.user import can_dump_other_users

    if settings.worker is None:
        return Check("worker user", True, "root (THAW_WORKER_USER unset): workers run with the sandbox's "
                     "privileges", "set THAW_WORKER_USER to run them as an unprivileged user", required=False)
    who = f"uid {settings.worker.uid}, gid {settings.worker.gid}, no capabilities"
    if can_dump_other_users():
        return Check("worker user", True, who)
    return Check("worker user", False, f"{who}; but CRIU cannot dump them: reading another user's resource limits "
                 "needs CAP_SYS_RESOURCE, which this thaw lacks",
                 "grant CAP_SYS_RESOURCE (deploy/kubernetes grants it), or unset THAW_WORKER_USER")


def _root() -> Check:
    ok = os.geteuid() == 0
    return Check("root", ok, "running as root" if ok else f"running as uid {os.geteuid()}",
                 "run thaw (or its agent) as root: CRIU and the CUDA checkpoint API act on other processes")


def _caps() -> Check:
    if not proc.mounted():
        return Check("capabilities", False, "cannot read /proc/self/status: /proc is not mounted", PROC_FIX)
    eff = proc.effective_capabilities()
    missing = [name for name, bit in CAPS.items() if not eff >> bit & 1]
    return Check("capabilities", not missing, "all present" if not missing else "missing " + ", ".join(missing),
                 "grant " + ", ".join(missing) + " (see deploy/kubernetes for the agent's securityContext)")


def _kernel() -> Check:
    release = os.uname().release
    if not proc.mounted():
        return Check("kernel", False, f"Linux {release}; /proc is not mounted", PROC_FIX)
    ok = proc.checkpoint_restore_kernel()  # CRIU needs CONFIG_CHECKPOINT_RESTORE and namespaces
    return Check("kernel", ok, f"Linux {release}" + (", CHECKPOINT_RESTORE" if ok else ", no CHECKPOINT_RESTORE"),
                 "use a kernel built with CONFIG_CHECKPOINT_RESTORE=y and namespaces")


def _root_dir() -> Check:
    """CRIU dumps a worker only when its root is its mount namespace's root ("The root task has
    another root than mntns"): it is on a machine or in a container, not inside a plain chroot."""
    name = "root directory"
    try:
        # pid 1 shares our mount namespace and has its root: unless we see another mount at /
        chrooted = (proc.ns_inode(1, "mnt") == proc.ns_inode("self", "mnt")
                    and proc.root_mount_id() != proc.root_mount_id(proc.path(1, "mountinfo")))
    except OSError:  # /proc missing (see the kernel check), or pid 1 not ours to look at
        return Check(name, True, "not checked (pid 1 cannot be read here)", required=False)
    if chrooted:
        return Check(name, False, "/ is a chroot, not the root of this mount namespace",
                     "enter the root with pivot_root, not chroot (a container, systemd-nspawn, or unshare --mount "
                     "then pivot_root): CRIU cannot snapshot a worker inside a chroot")
    return Check(name, True, "the mount namespace's root")


def _unshare() -> Check:
    path = shutil.which("unshare")
    return Check("unshare", path is not None, path or "not found",
                 "install util-linux (thaw starts sandboxes with unshare)")


def _criu(settings: Settings) -> list[Check]:
    from thaw.criu import check, find_criu

    try:
        criu = find_criu(settings.criu)
    except ThawError as exc:
        return [Check("criu", False, exc.message, exc.hint or "")]
    found = Check("criu", True, f"CRIU {criu.version} from {criu.source}")
    try:
        with tempfile.TemporaryDirectory(prefix="thaw-doctor-") as d:
            check(Path(d), criu=criu)
        return [found, _page_fill(criu), Check("criu check", True, "Looks good"), _ipv4_sockets(criu)]
    except ThawError as exc:
        return [found, _page_fill(criu), Check("criu check", False, exc.message.splitlines()[0], _criu_check_fix())]


def _ipv4_sockets(criu: Criu) -> Check:
    """Whether this kernel + CRIU can dump a TCP socket (CRIU 4.1.1 on Linux >= 6.16 cannot: criu#2705)."""
    from thaw.criu.probe import can_dump_ipv4

    ok, detail = can_dump_ipv4(criu)
    if ok:
        return Check("ipv4 sockets", True, f"CRIU can dump them ({detail})", required=False)
    return Check("ipv4 sockets", False, f"CRIU {criu.version} on Linux {os.uname().release} cannot dump a TCP/UDP "
                 f"socket: {detail}",
                 "workers must hold none when snapshotted (thaw refuses them before the freeze); a server thaw does "
                 "not own runs with --park-at-listen; fixed in CRIU after 4.1 (criu#2705)", required=False)


def _criu_check_fix() -> str:
    if not proc.mounted():
        return PROC_FIX
    if os.geteuid() != 0:
        return "run as root"
    return "CRIU's message above names what this host lacks (kernel options, capabilities, mounts)"


def _compiler() -> Check:
    """A C++ compiler that works: torch.compile builds its kernels' C++ wrappers with it (the demo's worker does)."""
    cxx = os.environ.get("CXX") or "g++"  # torch._inductor's choice: $CXX, else g++
    fix = "apt-get install g++ (or set CXX): torch.compile compiles C++ with it"
    path = shutil.which(cxx)
    if path is None:
        return Check("c++ compiler", False, f"{cxx} not found", fix, required=False)
    with tempfile.TemporaryDirectory(prefix="thaw-doctor-") as d:
        (Path(d) / "probe.cpp").write_text("int main() { return 0; }\n")
        try:
            run = subprocess.run([path, "-c", "probe.cpp", "-o", "probe.o"], cwd=d, capture_output=True, text=True,
                                 timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Check("c++ compiler", False, f"{path} does not run: {exc}", fix, required=False)
    if run.returncode != 0:
        first = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[0]
        return Check("c++ compiler", False, f"{path} cannot compile: {first}", fix, required=False)
    return Check("c++ compiler", True, f"{path} compiles")


def _python_headers() -> Check:
    """Python.h for this interpreter: torch.compile's C++ wrappers include it."""
    header = Path(sysconfig.get_path("include")) / "Python.h"
    ok = header.exists()
    return Check("python headers", ok, str(header) if ok else f"no {header}",
                 "apt-get install python3-dev: torch.compile's C++ wrappers include Python.h", required=False)


def _page_fill(criu: Criu) -> Check:
    """Whether this CRIU fills restored memory with several threads (docs/performance.md, "CRIU page fill")."""
    if criu.parallel_fill:
        return Check("criu page fill", True, "parallel, huge pages (fast CRIU)", required=False)
    if FAST_TREE.is_dir():
        hint = f"fast CRIU is installed: THAW_CRIU={FAST_TREE} uses it"
    else:
        hint = "scripts/install-criu-fast.sh builds fast CRIU (parallel fill)"
    return Check("criu page fill", True, f"stock, one thread; {hint}", required=False)


def _store(settings: Settings) -> Check:
    url = settings.store_url
    if "://" in url and not url.startswith("dir://"):
        return Check("store", True, f"{url} (not checked here)", required=False)
    path = Path(url.removeprefix("dir://"))
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    ok = os.access(probe, os.W_OK)
    return Check("store", ok, f"{path} {'writable' if ok else 'not writable'}",
                 "choose a writable directory with --store or THAW_STORE")


THP_KNOB = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp(knob: str = THP_KNOB) -> Check:
    """Transparent huge pages: CRIU fills a restored worker's memory about twice as fast with "always"."""
    try:
        with open(knob) as f:
            text = f.read()
    except OSError:
        return Check("huge pages", True, "transparent huge pages not available", required=False)
    mode = text.split("[")[1].split("]")[0] if "[" in text else text.strip()
    detail = f"THP {mode}" + ("" if mode == "always" else
                              ": stock CRIU fills restored memory with 4 KiB page faults (about half the speed "
                              "of 'always'; fast CRIU makes huge pages itself)")
    return Check("huge pages", True, detail,
                 "" if mode == "always" else "on dedicated GPU nodes: thaw agent serve --thp always "
                 "(affects every process of the node)", required=False)


def _nvidia() -> Check:
    text = proc.nvidia_version_line()
    if text is None:
        return Check("nvidia driver", True, "no NVIDIA driver (CPU workers only)", required=False)
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9]+)\.([0-9.]+)", text)
    if not m:
        return Check("nvidia driver", False, "cannot read the driver version", "check /proc/driver/nvidia/version")
    major = int(m.group(1))
    ok = major >= MIN_DRIVER
    return Check("nvidia driver", ok, f"driver {m.group(1)}.{m.group(2)}",
                 f"the CUDA checkpoint API with GPU remapping needs driver >= {MIN_DRIVER}")
