"""A worker that holds random memory, for the CRIU page-fill tests (tests/pipeline/test_page_fill.py).

It fills three kinds of private anonymous memory with random bytes: one large mapping
(TEST_RANDOM_MB MiB), many small malloc'ed buffers (heap and malloc arenas) and a 64 MiB
mapping written only in its first MiB of every two (no 2 MiB block of it is complete, so
a restore must not make huge pages there). It writes a report of that memory as computed
from its own memory to TEST_REPORT, parks in quiesce(), and after a thaw writes the report
again to TEST_REPORT + ".thawed", then waits to be killed.

The report: {"digest": xxh3-128 of all three, "partial_rss_kb": the partial mapping's
resident size, "vmflags": {"large": ..., "partial": ...} from /proc/self/smaps, "pid"}.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import time
from pathlib import Path

import xxhash

import thaw.worker

MiB = 1 << 20
PARTIAL = 64 * MiB


def private_mapping(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def address(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def smaps_entry(start: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that starts at ``start``."""
    fields: dict[str, str] = {}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line: "start-end perms ..."
                if inside:
                    break
                inside = int(head.split("-")[0], 16) == start
            elif inside:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
    return fields


def report(large: mmap.mmap, small: list[bytes], partial: mmap.mmap) -> dict:
    h = xxhash.xxh3_128()
    for view in (memoryview(large), *small, memoryview(partial)):
        h.update(view)
    large_maps, partial_maps = smaps_entry(address(large)), smaps_entry(address(partial))
    return {
        "digest": h.hexdigest(),
        "partial_rss_kb": int(partial_maps["Rss"].split()[0]),
        "vmflags": {"large": large_maps["VmFlags"], "partial": partial_maps["VmFlags"]},
        "pid": os.getpid(),
    }


def write_report(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(path)  # the test polls for the file: it must never see half of it


def main() -> None:
    out = Path(os.environ["TEST_REPORT"])
    large = private_mapping(int(os.environ["TEST_RANDOM_MB"]) * MiB)
    for off in range(0, len(large), 64 * MiB):
        chunk = os.urandom(min(64 * MiB, len(large) - off))
        large[off:off + len(chunk)] = chunk
    small = [os.urandom(48 << 10) for _ in range(1024)]  # 48 MiB in malloc'ed buffers
    partial = private_mapping(PARTIAL)
    for off in range(0, PARTIAL, 2 * MiB):
        partial[off:off + MiB] = os.urandom(MiB)
    write_report(out, report(large, small, partial))

    outcome = thaw.worker.quiesce()
    if outcome.stopped:
        return
    write_report(out.with_name(out.name + ".thawed"), report(large, small, partial))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
