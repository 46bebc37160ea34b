"""thaw.memory on a GPU: how long release and reacquire take per GiB (issue #4).

    python bench/memory_bench.py OUT.json [--sizes-gib 1,8,32] [--repeat 5]

For each size, one allocation of that size in its own pool (default 256 MiB chunks,
the probe's layout; for 8 GiB also 64 MiB and 1 GiB chunks), then ``repeat`` rounds of
release → reacquire, timing each (the median is reported), plus one reacquire with
poisoning on and, for 1 GiB, a backup-policy round trip (device → host → device).
Sizes that do not fit in the GPU's free memory are reported as skipped. Talks to the
driver only (no torch), so the numbers are the pool's own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from thaw.cuda import available, devices, driver_version
from thaw.errors import CudaError
from thaw.memory.driver import CudaDriver
from thaw.memory.pool import POISON_PATTERN, Pool

GIB = 1 << 30
MIB = 1 << 20


def measure(size: int, chunk: int, repeat: int, *, backup: bool = False) -> dict[str, Any]:
    pool = Pool(CudaDriver(), chunk_bytes=chunk)
    tag = "bench"
    if backup:
        pool.set_policy(tag, "backup")
    row: dict[str, Any] = {"size_gib": size / GIB, "chunk_mib": chunk // MIB,
                           "policy": "backup" if backup else "discard", "bytes": size}
    t = time.perf_counter()
    va = pool.allocate(tag, size, device=0)
    row["allocate_s"] = time.perf_counter() - t
    row["chunks"] = pool.stats()[tag]["chunks"]
    releases, reacquires = [], []
    try:
        for _ in range(repeat):
            releases.append(pool.release(tag)["seconds"])
            reacquires.append(pool.reacquire(tag)["seconds"])
        if not backup:
            pool.release(tag)
            pool.poison = POISON_PATTERN
            row["reacquire_poisoned_s"] = pool.reacquire(tag)["seconds"]
    finally:
        pool.free(va)
    row["release_s"] = statistics.median(releases)
    row["reacquire_s"] = statistics.median(reacquires)
    row["release_s_per_gib"] = row["release_s"] / (size / GIB)
    row["reacquire_s_per_gib"] = row["reacquire_s"] / (size / GIB)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sizes-gib", default="1,8,32")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not available():
        print("no NVIDIA GPU: nothing to measure", file=sys.stderr)
        return 1
    gpu = devices()[0]
    plan = []
    for gib in (float(s) for s in args.sizes_gib.split(",")):
        plan.append((int(gib * GIB), 256 * MIB, False))
        if gib == 8:
            plan += [(int(gib * GIB), 64 * MIB, False), (int(gib * GIB), 1024 * MIB, False)]
        if gib == 1:
            plan.append((int(gib * GIB), 256 * MIB, True))
    results = []
    for size, chunk, backup in plan:
        free = devices()[0].memory_free
        if free is not None and size > free - GIB:
            results.append({"size_gib": size / GIB, "chunk_mib": chunk // MIB, "skipped": f"only {free / GIB:.1f} GiB free"})
            continue
        try:
            row = measure(size, chunk, args.repeat, backup=backup)
        except CudaError as exc:
            row = {"size_gib": size / GIB, "chunk_mib": chunk // MIB, "error": str(exc)}
        print(json.dumps(row), flush=True)
        results.append(row)
    report = {"benchmark": "memory", "gpu": gpu.name, "gpu_uuid": gpu.uuid, "driver": driver_version(),
              "repeat": args.repeat, "results": results}
    args.out.write_text(json.dumps(report, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
