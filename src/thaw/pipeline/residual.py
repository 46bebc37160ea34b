"""What a snapshot's image is made of: the worker's memory by kind, before the GPU lock and after the checkpoint.

CRIU writes every resident anonymous page and every dirty private page of a file mapping;
the CUDA checkpoint adds the device's contents as new anonymous memory of the worker. So
two readings of ``/proc/PID/smaps`` — after the freeze hooks (nothing of the GPU moved yet)
and after the checkpoint (before the dump) — tell the image's residual apart:

* ``cuda_host_copy`` — what the checkpoint added: the driver's host copy of device memory;
* ``heap`` / ``anonymous`` — the Python and C heaps and other private anonymous memory;
* ``shared_anonymous`` — shared memory with no file (``/dev/zero (deleted)``, memfds, SysV);
* ``file_dirty`` — written pages of file mappings (libraries' relocated data);
* ``device_mapped`` — host memory mapped through ``/dev/nvidia*`` (pinned buffers) before the lock.

``thaw inspect --memory`` shows it beside the GPU side that the worker reported (weights
from the GPU memory service, released regions, torch's allocator).
"""

from __future__ import annotations

from thaw.store.manifest import MemoryCensus

KINDS = ("heap", "anonymous", "shared_anonymous", "file_dirty", "device_mapped", "stack")


def census(pid: int, *, top: int = 8) -> MemoryCensus:
    """Read ``/proc/PID/smaps`` once; bytes by kind. Returns an empty census if the process is gone."""
    totals = dict.fromkeys(KINDS, 0)
    sizes: list[tuple[str, int]] = []
    count = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            name, fields = "", {}
            for line in f:
                key, _, rest = line.partition(":")
                if " " in key or not rest:  # a mapping header: "start-end perms offset dev inode [name]"
                    if count:
                        _add(totals, sizes, name, fields)
                    parts = line.split(maxsplit=5)
                    name = parts[5].strip() if len(parts) > 5 else ""
                    fields = {}
                    count += 1
                elif rest.strip().endswith("kB"):
                    fields[key] = int(rest.split()[0]) * 1024
            if count:
                _add(totals, sizes, name, fields)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return MemoryCensus()
    sizes.sort(key=lambda s: -s[1])
    return MemoryCensus(**totals, mappings=count, largest=sizes[:top])


def _add(totals: dict[str, int], sizes: list[tuple[str, int]], name: str, fields: dict[str, int]) -> None:
    rss = fields.get("Rss", 0)
    if name.startswith("/dev/nvidia"):
        kind, size = "device_mapped", rss
    elif name == "[heap]":
        kind, size = "heap", fields.get("Anonymous", rss)
    elif name.startswith("[stack"):
        kind, size = "stack", fields.get("Anonymous", rss)
    elif name.startswith(("/dev/zero", "/memfd:", "/SYSV", "/dev/shm/")) or (
            fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0) and not name.startswith("/")):
        kind, size = "shared_anonymous", rss
    elif name.startswith("/"):
        kind, size = "file_dirty", fields.get("Private_Dirty", 0)
    else:
        kind, size = "anonymous", fields.get("Anonymous", rss)
    totals[kind] += size
    if size:
        sizes.append((name or "[anon]", size))
