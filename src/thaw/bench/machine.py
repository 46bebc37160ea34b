"""The facts of the machine a benchmark ran on, recorded with every result.

A restore time means little without the GPU, driver, kernel, CRIU build, CPU, the storage
the image was read from, the transparent-huge-page setting (it changes how fast CRIU fills
memory) and whether host memory and the page cache were warm. Each fact is read where the
kernel or the driver publishes it; one that cannot be read is None, never a guess.
"""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from pathlib import Path

from thaw import __version__
from thaw.bench.schema import Criu, Gpu, HostWarmth, Machine, Storage
from thaw.errors import HostError

THP = Path("/sys/kernel/mm/transparent_hugepage")


def collect(*, store: Path | None, staging: Path | None, criu: str | None = None,
            host: HostWarmth | None = None) -> Machine:
    """What this machine is; ``store``/``staging`` are the directories artifacts are read from (if local)."""
    gpus, driver = _gpus()
    storage = [_storage("store", store)] if store is not None else []
    if staging is not None:
        storage.append(_storage("staging", staging))
    return Machine(
        hostname=socket.gethostname(),
        kernel=platform.release(),
        os=_os_name(),
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count() or 0,
        memory_total=_memory_total(),
        gpus=gpus,
        cuda_driver=driver,
        torch=_version_of("torch"),
        python=platform.python_version(),
        thaw=__version__,
        criu=_criu(criu),
        thp_enabled=_selected(THP / "enabled"),
        thp_defrag=_selected(THP / "defrag"),
        storage=storage,
        host=host or HostWarmth(),
    )


def _gpus() -> tuple[list[Gpu], str | None]:
    try:
        from thaw.cuda import available, devices, driver_version
    except ImportError:
        return [], None
    if not available():
        return [], None
    found = [Gpu(index=g.index, name=g.name, uuid=g.uuid, memory_total=g.memory_total, driver=g.driver_version,
                 compute_capability=g.compute_capability) for g in devices()]
    return found, driver_version() or None


def _criu(override: str | None) -> Criu | None:
    from thaw.criu import find_criu

    try:
        found = find_criu(override)
    except HostError:
        return None
    path, _, source = found.source.partition(" (")
    return Criu(version=found.version, path=path, source=source.rstrip(")") or "host")


def _selected(path: Path) -> str | None:
    """The bracketed choice of a sysfs switch: ``always [madvise] never`` → ``madvise``."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else text.strip() or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        return platform.system()


def _version_of(package: str) -> str | None:
    # the installed distribution's version, without importing it (torch's import costs seconds)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _storage(role: str, path: Path) -> Storage:
    mount = _mount_of(path)
    free = None
    try:
        st = os.statvfs(_existing(path))
        free = st.f_bavail * st.f_frsize
    except OSError:
        pass
    source, fstype = (mount[1], mount[2]) if mount else (None, None)
    return Storage(role=role, path=str(path), filesystem=fstype, source=source, rotational=_rotational(source),
                   free_bytes=free)


def _existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _mount_of(path: Path) -> tuple[str, str, str] | None:
    """(mount point, source, file system type) of the mount holding ``path``: the longest matching mount point."""
    target = str(_existing(path).resolve())
    best: tuple[str, str, str] | None = None
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[0], fields[2])
    return best


def _rotational(source: str | None) -> bool | None:
    """Whether the block device behind ``source`` spins (sysfs queue/rotational); None for no block device."""
    if not source or not source.startswith("/dev/"):
        return None
    dev = Path(os.path.realpath(source)).name
    node = Path("/sys/class/block") / dev
    try:
        node = node.resolve()
    except OSError:
        return None
    for candidate in (node, node.parent):  # a partition's queue/ is its disk's
        flag = candidate / "queue" / "rotational"
        if flag.exists():
            try:
                return flag.read_text().strip() == "1"
            except OSError:
                return None
    return None
