"""Phase timings of snapshot and restore for real CUDA workers (run on a GPU machine).

    python bench/gpu_pipeline.py OUT.json [--sizes small,8gb] [--home /dev/shm/thaw-bench]

For each worker size: cold start (launch → parked), snapshot phases (freeze hooks, CUDA lock,
CUDA checkpoint, CRIU dump, publish), restore phases (verify, CRIU restore, CUDA restore, unlock,
thaw hooks + canary) and the first answer after restore. Writes JSON; bench/report.py renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gpu.conftest import get, start_worker  # noqa: E402

from thaw import pipeline  # noqa: E402
from thaw.config import Settings  # noqa: E402

SIZES = {
    "small": {"filler_gib": "0"},  # model + graph only
    "8gb": {"filler_gib": "8"},
}


def bench_size(settings: Settings, label: str, env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    inst = start_worker(settings, name=f"bench-{label}", **env)
    cold = time.perf_counter() - t0
    snap = pipeline.snapshot(settings, inst.id, f"bench-{label}")
    t1 = time.perf_counter()
    res = pipeline.restore(settings, f"bench-{label}", name=f"bench-{label}-r")
    restored = time.perf_counter() - t1
    answer = get(res.instance, "/infer")
    first_answer = time.perf_counter() - t1
    ok = answer == inst.ready().canary if inst.ready() else res.canary_got == answer
    pipeline.stop(settings, res.instance)
    return {
        "worker": label,
        "cold_start_to_parked_s": round(cold, 3),
        "image_bytes": snap.manifest.size,
        "snapshot": snap.timings,
        "restore": res.timings,
        "restore_wall_s": round(restored, 3),
        "first_answer_after_restore_s": round(first_answer, 3),
        "outputs_identical": bool(ok),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sizes", default="small,8gb")
    ap.add_argument("--home", type=Path, default=Path("/dev/shm/thaw-bench"))
    args = ap.parse_args()
    shutil.rmtree(args.home, ignore_errors=True)
    settings = Settings(home=args.home)
    results = []
    try:
        for label in args.sizes.split(","):
            results.append(bench_size(settings, label, SIZES[label]))
            print(json.dumps(results[-1]), flush=True)
    finally:
        for inst in pipeline.list_instances(settings):
            try:
                pipeline.stop(settings, inst)
            except Exception:
                pass
        shutil.rmtree(args.home, ignore_errors=True)
    args.out.write_text(json.dumps({"benchmark": "gpu_pipeline", "results": results}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
