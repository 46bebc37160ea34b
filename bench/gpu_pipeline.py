"""Phase timings of snapshot and restore for real CUDA workers (run on a GPU machine).

    python bench/gpu_pipeline.py OUT.json [--sizes small,8gb,engine-qwen3-0.6b,engine-qwen3-8b]

For each worker: cold start (launch → parked), snapshot phases (freeze hooks, CUDA lock, CUDA
checkpoint, CRIU dump, publish), restore phases (verify, CRIU restore, CUDA restore, unlock, thaw
hooks + canary) and the first answer after restore, checked against the outputs recorded before
the snapshot. ``small``/``8gb`` are the torch graph worker of tests/gpu (8 GB of filler state);
``engine-*`` are thaw's reference LLM engine with its KV cache in thaw.memory (released at
snapshot), weights from bench/engine_bench.py's directory. Writes JSON; bench/report.py renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402
from gpu.conftest import get, start_worker  # noqa: E402

from thaw import pipeline  # noqa: E402
from thaw.config import Settings  # noqa: E402
from thaw.errors import ThawError  # noqa: E402

SIZES = {
    "small": {"filler_gib": "0"},  # model + graph only
    "8gb": {"filler_gib": "8"},
}
WEIGHTS_ROOT = Path(os.environ.get("THAW_BENCH_WEIGHTS", "/var/tmp/thaw-bench-weights"))


def start_engine(settings: Settings, label: str, config: str, kv_gb: str | None) -> pipeline.Instance:
    weights = WEIGHTS_ROOT / config
    if not (weights / "config.json").exists():
        subprocess.run([sys.executable, "-m", "thaw", "engine", "make-weights", config, str(weights)], check=True)
    kv = ["--kv-gb", kv_gb] if kv_gb else []
    inst = pipeline.launch(settings, [sys.executable, "-m", "thaw.engine", "serve", "--weights", str(weights),
                                      "--device", "cuda", "--port", "0", *kv], name=f"bench-{label}")
    pipeline.wait_ready(settings, inst, timeout=900)
    return inst


def engine_answer(inst: pipeline.Instance, canary: dict) -> list[list[int]]:
    """Greedy token ids for the canary's prompts, over HTTP on the worker's unix socket."""
    sock = inst.dir / "http.sock"
    deadline = time.monotonic() + 120
    while not sock.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{inst.id} never opened {sock}; log:\n{inst.log_tail(30)}")
        time.sleep(0.01)
    out = []
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120) as c:
        for prompt in canary["prompts"]:
            r = c.post("http://engine/v1/completions", json={
                "prompt": prompt, "max_tokens": canary["max_tokens"], "temperature": 0,
                "ignore_eos": True, "return_token_ids": True})
            r.raise_for_status()
            out.append(r.json()["choices"][0]["token_ids"])
    return out


def bench_size(settings: Settings, label: str) -> dict:
    """One worker's cold start, snapshot and restore; ``engine-CONFIG[@KV_GB]`` for the LLM engine."""
    t0 = time.perf_counter()
    if label.startswith("engine-"):
        config, _, kv_gb = label.removeprefix("engine-").partition("@")
        inst = start_engine(settings, label.replace("@", "-kv"), config, kv_gb or None)
    else:
        inst = start_worker(settings, name=f"bench-{label}", **SIZES[label])
    cold = time.perf_counter() - t0
    recorded = inst.ready().canary
    artifact = f"bench-{label}".replace("@", "-kv")
    snap = pipeline.snapshot(settings, inst.id, artifact)
    t1 = time.perf_counter()
    res = pipeline.restore(settings, artifact, name=f"{artifact}-r")
    restored = time.perf_counter() - t1
    if label.startswith("engine-"):
        ok = engine_answer(res.instance, recorded) == recorded["tokens"]
    else:
        ok = get(res.instance, "/infer") == recorded
    first_answer = time.perf_counter() - t1
    pipeline.stop(settings, res.instance)
    return {
        "worker": label,
        "cold_start_to_parked_s": round(cold, 3),
        "image_bytes": snap.manifest.size,
        "kv_released_bytes": sum(r.bytes for r in snap.manifest.memory_released),
        "snapshot": snap.timings.flat(),
        "restore": res.timings.flat(),
        "restore_wall_s": round(restored, 3),
        "first_answer_after_restore_s": round(first_answer, 3),
        "outputs_identical": bool(ok),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sizes", default="small,8gb,engine-qwen3-0.6b,engine-qwen3-8b")
    ap.add_argument("--home", type=Path, default=Path("/dev/shm/thaw-bench"))
    args = ap.parse_args()
    shutil.rmtree(args.home, ignore_errors=True)
    settings = Settings(home=args.home)
    results = []
    try:
        for label in args.sizes.split(","):
            try:
                results.append(bench_size(settings, label))
            except Exception as exc:  # noqa: BLE001 - record what failed, with the workers' logs, and go on
                results.append({"worker": label, "error": f"{type(exc).__name__}: {exc}",
                                "logs": {i.id: i.log_tail(40) for i in pipeline.list_instances(settings)
                                         if label.replace("@", "-kv") in i.id},
                                "gpu_memory": subprocess.run(
                                    ["nvidia-smi", "--query-gpu=index,memory.used,memory.total",
                                     "--format=csv,noheader"], check=False, capture_output=True, text=True).stdout})
            print(json.dumps(results[-1]), flush=True)
            args.out.write_text(json.dumps({"benchmark": "gpu_pipeline", "results": results}, indent=2))
    finally:
        for inst in pipeline.list_instances(settings):
            try:
                pipeline.stop(settings, inst)
            except (ThawError, OSError) as exc:  # cleaning up: say so, and go on with the others
                print(f"could not stop {inst.id}: {exc}", file=sys.stderr)
        shutil.rmtree(args.home, ignore_errors=True)
    args.out.write_text(json.dumps({"benchmark": "gpu_pipeline", "results": results}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
