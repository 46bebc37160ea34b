"""Everything thaw reads from /proc, in one place: process state, trees, open files, namespaces, mounts.

Standard library only: the worker SDK uses it too. Each function reads one fact; a
process that is gone raises ``FileNotFoundError`` or ``ProcessLookupError`` (ESRCH
when it exits between ``open`` and ``read``) unless the function says otherwise, and
one that may not be read raises ``PermissionError``: callers decide what that means.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
#: the NVIDIA kernel module's version line ("NVRM version: NVIDIA UNIX Open Kernel Module ... 580.159.04 ...")
NVIDIA_VERSION = PROC / "driver" / "nvidia" / "version"

#: a process that went away while it was read
Gone = (FileNotFoundError, ProcessLookupError)


def path(pid: int | str, *parts: str) -> Path:
    return PROC.joinpath(str(pid), *parts)


# --- processes -----------------------------------------------------------------------------------


def pids() -> list[int]:
    """Every process on the host (as this pid namespace sees it), this one excluded."""
    me = os.getpid()
    return [int(p) for p in os.listdir(PROC) if p.isdigit() and int(p) != me]


def exists(pid: int) -> bool:
    return pid > 0 and path(pid).exists()


def _stat_fields(pid: int | str) -> list[str]:
    """Fields 3.. of /proc/PID/stat (the command name, field 2, may hold spaces and parentheses)."""
    text = path(pid, "stat").read_text()
    return text[text.rfind(")") + 2:].split()


def zombie(pid: int) -> bool:
    """True when ``pid`` is a zombie, or already gone."""
    try:
        return _stat_fields(pid)[0] == "Z"
    except Gone:
        return True


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return exists(pid) and not zombie(pid)


def start_ticks(pid: int | str = "self") -> int:
    """When the process started, in clock ticks after boot (field 22 of stat)."""
    return int(_stat_fields(pid)[19])


def children_map() -> dict[int, list[int]]:
    """Parent pid → its children, for every process that can be read."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir(PROC):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(entry)[1])
        except OSError:
            continue
        children.setdefault(parent, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents before children."""
    children = children_map()
    order, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        order.append(current)
        todo.extend(sorted(children.get(current, [])))
    return order


def first_child(pid: int) -> int | None:
    """The first child of ``pid``'s main thread, or None (none yet, or ``pid`` is gone)."""
    try:
        kids = path(pid, "task", str(pid), "children").read_text().split()
    except Gone:
        return None
    return int(kids[0]) if kids else None


def status_field(pid: int | str, name: str) -> str | None:
    """A field of /proc/PID/status (``TracerPid``, ``CapEff``, ...), or None if it has none."""
    with open(path(pid, "status")) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    return None


def tracer(pid: int) -> int:
    """The pid tracing ``pid`` (CRIU while it dumps or restores it), 0 for none or when ``pid`` is gone."""
    try:
        return int(status_field(pid, "TracerPid") or 0)
    except Gone:
        return 0


def effective_capabilities() -> int:
    """This process's effective capability set (a bit mask, capability(7) numbers)."""
    return int(status_field("self", "CapEff") or "0", 16)


def command_line(pid: int) -> list[str]:
    """``pid``'s arguments (empty for a kernel thread or a zombie)."""
    return [a.decode(errors="replace") for a in path(pid, "cmdline").read_bytes().split(b"\0") if a]


def environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` started with (changes it made later are not in /proc)."""
    raw = path(pid, "environ").read_bytes()
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def children(pid: int) -> list[int]:
    """The children of ``pid``'s main thread (``task/PID/children``)."""
    return [int(k) for k in path(pid, "task", str(pid), "children").read_text().split()]


def ns_pid(pid: int | str) -> int:
    """The pid of a process in its own (innermost) pid namespace (last field of NSpid); -1 if not shown."""
    nspid = status_field(pid, "NSpid")
    return int(nspid.split()[-1]) if nspid else -1


def cgroups(pid: int | str) -> dict[str, str]:
    """``/proc/PID/cgroup`` as {hierarchy: path}: v1 lines by their controller list ("cpu,cpuacct",
    "name=systemd"), the v2 line as ""."""
    out = {}
    for line in path(pid, "cgroup").read_text().splitlines():
        _, controllers, where = line.split(":", 2)
        out[controllers] = where
    return out


# --- open files and mappings -------------------------------------------------------------------


def fd_target(pid: int, fd: int) -> str:
    """What descriptor ``fd`` of ``pid`` points at (a path, ``socket:[...]``, ``pipe:[...]``)."""
    return os.readlink(path(pid, "fd", str(fd)))


def fd_targets(pid: int) -> dict[int, str]:
    """Every open descriptor of ``pid`` and what it points at (descriptors closed meanwhile are left out)."""
    out: dict[int, str] = {}
    for fd in sorted(os.listdir(path(pid, "fd")), key=int):
        try:
            out[int(fd)] = fd_target(pid, int(fd))
        except OSError:
            continue  # closed meanwhile
    return out


def mapped_paths(pid: int) -> set[str]:
    """The paths of the files ``pid`` has mapped."""
    with open(path(pid, "maps")) as maps:
        return {fields[5].strip() for line in maps if len(fields := line.split(maxsplit=5)) == 6}


def mappings(pid: int) -> list[tuple[str, str]]:
    """(address range, what is mapped there: a path, ``[heap]``, ``anon_inode:[...]``, or "") of each mapping."""
    with open(path(pid, "maps")) as maps:
        return [(fields[0], fields[5].strip() if len(fields) == 6 else "")
                for line in maps if (fields := line.split(maxsplit=5))]


def smaps(pid: int) -> list[tuple[str, dict[str, int]]]:
    """Every mapping of ``pid``: its name (a path, ``[heap]``, "" for anonymous) and its sizes in bytes (Rss, ...)."""
    out: list[tuple[str, dict[str, int]]] = []
    with open(path(pid, "smaps")) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if " " in key or not rest:  # a mapping header: "start-end perms offset dev inode [name]"
                parts = line.split(maxsplit=5)
                out.append((parts[5].strip() if len(parts) > 5 else "", {}))
            elif out and rest.strip().endswith("kB"):
                out[-1][1][key] = int(rest.split()[0]) * 1024
    return out


def rss(pid: int | str = "self") -> int:
    """Resident memory of ``pid`` in bytes (statm)."""
    return int(path(pid, "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def holders(directory: Path | str, *, cwd: bool = False) -> list[int]:
    """Processes (other than this one) with ``directory`` or a file under it open (``cwd``: or working there)."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    for pid in pids():
        try:
            targets = list(fd_targets(pid).values())
            if cwd:
                targets.append(os.readlink(path(pid, "cwd")))
            if any(target == prefix[:-1] or target.startswith(prefix) for target in targets):
                found.append(pid)
        except OSError:
            continue  # gone, or not ours to look at
    return found


def net_table(pid: int, name: str) -> list[str]:
    """The rows of ``net/NAME`` (tcp, tcp6, udp, udp6, ...) of ``pid``'s network namespace, header left out."""
    return path(pid, "net", name).read_text().splitlines()[1:]


# --- namespaces ----------------------------------------------------------------------------------


def ns_path(pid: int | str, kind: str, *, tid: int | None = None) -> str:
    """The namespace file of ``pid`` (or of its thread ``tid``): ``/proc/PID/ns/KIND``."""
    if tid is not None:
        return str(path(pid, "task", str(tid), "ns", kind))
    return str(path(pid, "ns", kind))


def ns_inode(pid: int | str, kind: str) -> int:
    """The inode that names ``pid``'s namespace of ``kind`` (``pid``, ``net``, ``mnt``, ...)."""
    return os.stat(ns_path(pid, kind)).st_ino


def in_netns(netns: int, *, env: str) -> list[int]:
    """Live processes in the network namespace ``netns`` whose initial environment holds the entry ``env``."""
    name, _, value = env.partition("=")
    found = []
    for pid in pids():
        try:
            if ns_inode(pid, "net") != netns or zombie(pid):
                continue
            if environ(pid).get(name) == value:
                found.append(pid)
        except (*Gone, PermissionError):
            continue
    return found


# --- the host ------------------------------------------------------------------------------------


def mounted() -> bool:
    """Whether a procfs is mounted at /proc (in a bare chroot it is not)."""
    return (PROC / "self" / "status").exists()


def mountpoints(mountinfo: str | Path = PROC / "self" / "mountinfo") -> list[str]:
    """The mountpoints of this mount namespace, in mount order."""
    with open(mountinfo) as f:
        return [_unescape(line.split()[4]) for line in f]


def cgroup_mounts(root: Path, mountinfo: str | Path = PROC / "self" / "mountinfo") -> dict[str, Path]:
    """{hierarchy: mountpoint} of the cgroup file systems at or under ``root`` (v2 as "")."""
    out: dict[str, Path] = {}
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, point, super_opts = fields[sep + 1], Path(_unescape(fields[4])), fields[-1]
            if not (point == root or root in point.parents):
                continue
            if fstype == "cgroup2":
                out[""] = point
            elif fstype == "cgroup":
                names = [o for o in super_opts.split(",") if o not in ("rw", "ro") and not o.startswith("release_agent")
                         and o not in ("xattr", "noprefix", "clone_children", "cpuset_v2_mode", "nsdelegate")]
                out[",".join(names)] = point
    return out


def root_mount_id(mountinfo: str | Path = PROC / "self" / "mountinfo") -> str | None:
    """The id of the mount a process sees at its ``/`` (the top one), or None when its root is no mount."""
    with open(mountinfo) as f:
        ids = [line.split()[0] for line in f if _unescape(line.split()[4]) == "/"]
    return ids[-1] if ids else None


def cap_last_cap() -> int:
    """The highest capability number this kernel knows."""
    return int((PROC / "sys" / "kernel" / "cap_last_cap").read_text())


def mounts() -> list[tuple[str, str, str]]:
    """(source, mount point, file system type) of every mount this process sees, in mount order."""
    out = []
    for line in (PROC / "self" / "mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            out.append((_unescape(fields[0]), _unescape(fields[1]), fields[2]))
    return out


def cpu_model() -> str | None:
    """The CPU's model name (``model name`` of cpuinfo), or None where cpuinfo does not say."""
    for line in (PROC / "cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def memory_total() -> int | None:
    """The host's memory in bytes (MemTotal of meminfo)."""
    for line in (PROC / "meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


#: writing 3 drops the page cache, dentries and inodes (root only)
DROP_CACHES = PROC / "sys" / "vm" / "drop_caches"


def boot_id() -> str:
    """This boot's id (``sys/kernel/random/boot_id``): it changes at every boot."""
    return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()


def checkpoint_restore_kernel() -> bool:
    """Whether the kernel has CONFIG_CHECKPOINT_RESTORE (``ns_last_pid`` exists only then) and namespaces."""
    return (PROC / "sys" / "kernel" / "ns_last_pid").exists() and (PROC / "self" / "ns" / "pid").exists()


def nvidia_version_line() -> str | None:
    """The NVIDIA kernel module's version text, or None on a host without the driver."""
    try:
        return NVIDIA_VERSION.read_text()
    except FileNotFoundError:
        return None


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    return field.encode().decode("unicode_escape") if "\\" in field else field
