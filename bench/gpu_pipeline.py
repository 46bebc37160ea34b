"""Cold starts, snapshots and restores of real CUDA workers, measured by ``thaw bench`` (run on a GPU machine).

    python bench/gpu_pipeline.py OUT.json [--sizes small,8gb,engine-qwen3-0.6b,engine-qwen3-8b] [--home DIR]
                                 [--cold N] [--restores N] [--concurrency C] [--drop-caches] [--pretouch GIB]

Each size is one ``thaw bench`` run (thaw.bench.runner, the pipeline in this process): cold
starts to the first answer, one snapshot with its phases, restores to the first answer, each
checked against the canary and the other copies' answers. ``small``/``8gb`` are the torch
graph worker of tests/gpu (8 GB of filler state; first answer: GET /infer); ``engine-CONFIG[@KV_GB]``
is thaw's reference LLM engine with its KV cache in thaw.memory (released at snapshot), weights
from bench/engine_bench.py's directory (first answer: a greedy /v1/completions). Each worker's
full result (result.json, results.md, plots) goes to ``bench-<size>/`` beside OUT.json; OUT.json
holds one row per worker for bench/report.py, written after every worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from thaw.bench.answer import http_answer
from thaw.bench.files import write_outputs
from thaw.bench.operations import LocalOperations
from thaw.bench.phases import walk
from thaw.bench.runner import BenchOptions, run_bench
from thaw.bench.schema import Answer, BenchResult, Phase
from thaw.config import Settings

REPO = Path(__file__).resolve().parents[1]
GRAPH_WORKER = REPO / "tests" / "gpu" / "workers" / "graph_worker.py"
SIZES = {"small": "0", "8gb": "8"}  # the graph worker's filler state, GiB
WEIGHTS_ROOT = Path(os.environ.get("THAW_BENCH_WEIGHTS", "/var/tmp/thaw-bench-weights"))


def worker(label: str, device: str = "cuda") -> tuple[list[str], dict[str, str], Answer]:
    """The command, environment and first-answer request of one size."""
    env = dict(os.environ)
    if not label.startswith("engine-"):
        env["WORKER_FILLER_GIB"] = SIZES[label]
        return [sys.executable, str(GRAPH_WORKER)], env, http_answer("/infer")
    config, _, kv_gb = label.removeprefix("engine-").partition("@")
    weights = WEIGHTS_ROOT / config
    if not (weights / "config.json").exists():
        subprocess.run([sys.executable, "-m", "thaw", "engine", "make-weights", config, str(weights),
                        *(["--device", device] if device == "cpu" else [])], check=True)
    kv = ["--kv-gb", kv_gb] if kv_gb else []
    argv = [sys.executable, "-m", "thaw.engine", "serve", "--weights", str(weights), "--device", device, "--port", "0",
            *kv]
    return argv, env, http_answer("/v1/completions")


def row(label: str, result: BenchResult) -> dict[str, Any]:
    """bench/report.py's row of one worker (the columns of earlier results, plus the distribution)."""
    seq = next((s for s in result.summaries if s.mode == "sequential" and s.page_cache == "warm"), None)
    first = next((r for r in result.restores if r.ok and r.phases is not None), None)
    cold = next((c for c in result.cold_starts if c.ok and c.phases is not None), None)
    snap = result.snapshot
    out: dict[str, Any] = {"worker": label, "complete": result.complete}
    if cold is not None and cold.phases is not None:
        parked = sum(p.seconds for p in cold.phases.children if p.name in ("launch", "warm_up"))
        out["cold_start_to_parked_s"] = round(parked, 3)
        out["cold_start_to_first_answer_s"] = round(cold.seconds or 0.0, 3)
    if snap is not None:
        out |= {"image_bytes": snap.image_bytes, "kv_released_bytes": snap.released_bytes}
        if snap.phases is not None:
            out["snapshot"] = _flat(snap.phases.children[0])
    if first is not None and first.phases is not None:
        out["restore"] = _flat(first.phases.children[0])
    if seq is not None:
        out |= {"restores": seq.attempts, "success_rate": seq.success_rate, "exact": seq.exact,
                "first_answer_after_restore_s": seq.latency.p50, "restore_p90_s": seq.latency.p90,
                "restore_p99_s": seq.latency.p99, "speedup_p50": seq.speedup_p50,
                "floor_multiple_p50": seq.floor_multiple_p50,
                "outputs_identical": seq.exact == seq.attempts}
    if result.stopped:
        out["error"] = result.stopped
    return out


def _flat(tree: Phase) -> dict[str, float]:
    """A pipeline tree as the flat timings earlier results used: each phase by its own name."""
    return {path.rsplit("/", 1)[-1]: round(seconds, 6) for path, seconds in walk(tree)
            if not path.endswith("unaccounted")} | {"total": tree.seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sizes", default="small,8gb,engine-qwen3-0.6b,engine-qwen3-8b")
    ap.add_argument("--home", type=Path, default=Path("/dev/shm/thaw-bench"))
    ap.add_argument("--cold", type=int, default=1)
    ap.add_argument("--restores", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--drop-caches", action="store_true")
    ap.add_argument("--pretouch", type=float, default=0.0, help="GiB of host memory to touch first")
    ap.add_argument("--device", default="cuda", help="the engine's device (cpu: to check this script without a GPU)")
    args = ap.parse_args()
    shutil.rmtree(args.home, ignore_errors=True)
    ops = LocalOperations(Settings(home=args.home))
    rows: list[dict[str, Any]] = []
    failed = False
    try:
        for label in args.sizes.split(","):
            argv, env, answer = worker(label, args.device)
            name = f"bench-{label}".replace("@", "-kv")
            options = BenchOptions(name=name, argv=argv, env=env, cold=args.cold, restores=args.restores,
                                   concurrency=args.concurrency, drop_caches=args.drop_caches,
                                   pretouch_bytes=int(args.pretouch * 2**30), answer=answer, cwd=REPO)
            result = run_bench(options, ops, lambda stage, done, total, detail, label=label: print(
                f"[{label}] {stage} {done}/{total} {detail}", flush=True))
            write_outputs([result], args.out.parent / name)
            rows.append(row(label, result))
            failed |= not result.complete or any(s.successes < s.attempts for s in result.summaries)
            print(json.dumps(rows[-1]), flush=True)
            args.out.write_text(json.dumps({"benchmark": "gpu_pipeline", "results": rows}, indent=2))
    finally:
        shutil.rmtree(args.home, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
