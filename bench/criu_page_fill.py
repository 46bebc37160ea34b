"""CRIU restore of a worker holding N GiB of random memory: stock CRIU vs fast CRIU (parallel page fill).

    python bench/criu_page_fill.py OUT.json [--gib 4] [--repeat 3] [--variants stock,fast,fast-4k]

Runs as root on a CPU host. One worker (tests/workers/memory.py: one large random
mapping, 48 MiB of malloc'ed buffers, a 64 MiB mapping written in part) is snapshotted
once with the default CRIU, then restored ``repeat`` times by each variant, the variants
taking turns so that a drift of the host's load spreads over all of them. Each restore is
checked (the worker's own checksum of its memory), timed (thaw's ``criu_restore`` phase:
the whole CRIU restore) and then killed. The image stays in the page cache, as it does on
a node that staged the artifact.

Variants: ``stock`` = the default CRIU (/opt/thaw/criu, or THAW_CRIU); ``fast`` = fast
CRIU as it runs by default (threads = CPUs, huge pages where THP is "madvise"); ``fast-4k``
= fast CRIU without huge pages (CRIU_FILL_THP=0); ``fast-off`` = fast CRIU on the stock
path (CRIU_FILL_THREADS=1 CRIU_FILL_THP=0). Fast CRIU is taken from THAW_CRIU_FAST or
/opt/thaw/criu-fast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from thaw import pipeline
from thaw.config import Settings
from thaw.criu import find_criu
from thaw.criu.locate import FAST_TREE
from thaw.store import open_store

WORKER = Path(__file__).resolve().parent.parent / "tests" / "workers" / "memory.py"
FILL_LINE = re.compile(r"page fill: (\d+) bytes in (\d+) reads by (\d+) threads; (\d+) huge pages collapsed")
VARIANTS: dict[str, dict[str, str]] = {
    "stock": {},
    "fast": {},
    "fast-4k": {"CRIU_FILL_THP": "0"},
    "fast-off": {"CRIU_FILL_THREADS": "1", "CRIU_FILL_THP": "0"},
}
ENV_KEYS = ("CRIU_FILL_THREADS", "CRIU_FILL_THP")


def wait_for(path: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path} after {timeout:.0f} s")
        time.sleep(0.1)
    return json.loads(path.read_text())


def host() -> dict[str, Any]:
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "thp": thp,
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
            "load_avg_at_start": os.getloadavg()}


def restore_once(settings: Settings, variant: str, fast_tree: str, round_: int, report: Path,
                 before: dict[str, Any]) -> dict[str, Any]:
    for key in ENV_KEYS:  # criu swrk inherits our environment
        os.environ.pop(key, None)
    os.environ.update(VARIANTS[variant])
    run = settings.model_copy(update={"criu": None if variant == "stock" else fast_tree})
    thawed = report.with_name(report.name + ".thawed")
    thawed.unlink(missing_ok=True)
    res = pipeline.restore(run, "mem", store=open_store(run.store_url), name=f"{variant}-{round_}")
    try:
        after = wait_for(thawed, 300)
        if after["digest"] != before["digest"]:
            raise AssertionError(f"{variant}: restored memory differs from the original")
        log = (res.instance.dir / "ops" / "restore" / "restore.log").read_text()
        fills = [tuple(map(int, m.groups())) for m in FILL_LINE.finditer(log)]
        return {"variant": variant, "round": round_, "criu_restore_s": res.timings.seconds("criu_restore"),
                "fill_bytes": sum(f[0] for f in fills), "fill_threads": max((f[2] for f in fills), default=1),
                "huge_pages": sum(f[3] for f in fills)}
    finally:
        res.instance.kill(timeout=30)
        for key in ENV_KEYS:
            os.environ.pop(key, None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--gib", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--variants", default="stock,fast,fast-4k")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    fast_tree = os.environ.get("THAW_CRIU_FAST", str(FAST_TREE))
    if any(v != "stock" for v in variants) and not find_criu(fast_tree).parallel_fill:
        ap.error(f"{fast_tree} is not fast CRIU: build it with scripts/install-criu-fast.sh")

    conditions = host()
    with tempfile.TemporaryDirectory(prefix="thaw-bench-fill-") as tmp:
        home = Path(tmp)
        settings = Settings(home=home / "home", store=str(home / "home" / "artifacts"))
        report = home / "memory.json"
        worker = pipeline.launch(settings, [sys.executable, str(WORKER)], name="m", cwd=home,
                                 env={**os.environ, "TEST_RANDOM_MB": str(int(args.gib * 1024)),
                                      "TEST_REPORT": str(report)})
        pipeline.wait_ready(settings, worker, timeout=600)
        before = wait_for(report, 10)
        snap = pipeline.snapshot(settings, "m", "mem", store=open_store(settings.store_url))
        image_bytes = sum(f.stat().st_size for f in (settings.home / "artifacts").rglob("pages-*.img"))
        rows = [restore_once(settings, v, fast_tree, r, report, before)
                for r in range(args.repeat) for v in variants]

    summary = {}
    for v in variants:
        times = [row["criu_restore_s"] for row in rows if row["variant"] == v]
        med = statistics.median(times)
        summary[v] = {"criu_restore_s_median": med, "criu_restore_s_min": min(times), "criu_restore_s_max": max(times),
                      "gb_per_s_median": image_bytes / med / 1e9, "n": len(times)}
    conditions["load_avg_at_end"] = os.getloadavg()
    out = {"host": conditions, "gib": args.gib, "image_bytes": image_bytes, "snapshot_timings": snap.timings,
           "stock_criu": find_criu().source, "fast_criu": fast_tree, "rows": rows, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    for v, s in summary.items():
        print(f"{v:9s} CRIU restore median {s['criu_restore_s_median']:.2f} s "
              f"(min {s['criu_restore_s_min']:.2f}, max {s['criu_restore_s_max']:.2f}, n={s['n']}), "
              f"{s['gb_per_s_median']:.2f} GB/s of {image_bytes / 1e9:.2f} GB pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
