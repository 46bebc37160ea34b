"""Cold start vs restore of an unmodified server (issue 16): the FastAPI + transformers Qwen3 server of
tests/workers/hf_server.py, run with --park-at-listen, on the GPU with CUDA graphs.

    python bench/listen_gpu.py OUT.json [--size small|qwen3-0.6b] [--runs 3] [--cold both|fresh|cached] [--cpu]

cold start = ``thaw run --park-at-listen`` until the server answered its first completion (launch → warm-up →
parked → released → bind → answer), once with an empty torch.compile cache (a new node) and once with the
cache the first start left (the same node again); restore = ``thaw restore`` (fetch, CRIU, CUDA restore, the
HTTP canary) until the copy answered its first completion, which must equal the original's. Prints
min / median / max of each and writes every measurement to OUT.json. ``--cpu`` is a dry run on the CPU
(the tiny model), for checking the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "tests" / "workers" / "hf_server.py"

import httpx  # noqa: E402

from thaw import pipeline  # noqa: E402
from thaw.config import Settings  # noqa: E402
from thaw.listen import ParkAtListen  # noqa: E402
from thaw.pipeline.http_canary import parse  # noqa: E402
from thaw.sandbox import netns  # noqa: E402

PORT = 8000
PROMPT = {"prompt": "Snapshots restore in seconds", "max_tokens": 16}
CANARY = '{"prompt": "Hello, world", "max_tokens": 16}\n{"prompt": "The capital of France is", "max_tokens": 16}\n'


def first_answer(inst: pipeline.Instance, timeout: float = 900) -> list[int]:
    """The token ids of the first completion the server in ``inst``'s sandbox gives (waits for it to listen)."""

    def run() -> list[int]:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", trust_env=False, timeout=300) as client:
            while True:
                try:
                    response = client.post("/v1/completions", json=PROMPT)
                    response.raise_for_status()
                    return response.json()["choices"][0]["token_ids"]
                except httpx.ConnectError:
                    if time.monotonic() > deadline or not inst.alive():
                        raise RuntimeError(f"{inst.id} never answered; log:\n{inst.log_tail(30)}") from None
                    time.sleep(0.01)

    return netns.run_in(inst.host_pid, run)


def launch(settings: Settings, name: str, args: list[str], cache: Path) -> pipeline.Instance:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    argv = [sys.executable, str(SERVER), "--port", str(PORT), *args]
    inst = pipeline.launch(settings, argv, name=name, env=env, park=ParkAtListen())
    pipeline.wait_ready(settings, inst, timeout=1800)
    return inst


def cold_start(settings: Settings, name: str, args: list[str], cache: Path) -> tuple[float, list[int]]:
    t0 = time.perf_counter()
    inst = launch(settings, name, args, cache)
    pipeline.release(settings, inst)
    answer = first_answer(inst)
    seconds = time.perf_counter() - t0
    pipeline.stop(settings, inst)
    return seconds, answer


def spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", default="small", choices=("tiny", "small", "qwen3-0.6b"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold", choices=("both", "fresh", "cached"), default="both",
                        help="which cold starts to measure: with an empty compile cache, with the warm one, or both")
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU (tiny model, no CUDA graphs)")
    opts = parser.parse_args()
    if opts.cpu:
        args = ["--device", "cpu", "--size", "tiny", "--generate", "padded"]
    else:
        args = ["--device", "cuda", "--size", opts.size, "--generate", "hf-static", "--compile-mode", "reduce-overhead"]
    root = Path(tempfile.mkdtemp(prefix="thaw-listen-bench-", dir="/var/tmp"))
    settings = Settings(home=root / "home", store=str(root / "home" / "artifacts"))
    result: dict[str, Any] = {"server": args, "runs": opts.runs, "python": platform.python_version(),
                              "kernel": platform.release()}
    try:
        # the original, snapshotted with its HTTP canary; its compile cache stays for the copies (mapped by path)
        kept_cache = root / "inductor-original"
        original = launch(settings, "original", args, kept_cache)
        t0 = time.perf_counter()
        snap = pipeline.snapshot(settings, original.id, "bench", canary_http=parse(CANARY))
        result["snapshot_s"] = round(time.perf_counter() - t0, 3)
        result["snapshot_timings"] = snap.timings
        result["artifact_bytes"] = snap.manifest.size

        print(f"snapshot: {result['snapshot_s']:.2f} s", flush=True)
        cold_fresh, cold_cached, restores, answers = [], [], [], []
        for i in range(opts.runs):  # restores first: they are what the benchmark is about
            t0 = time.perf_counter()
            res = pipeline.restore(settings, "bench", name=f"copy{i}")
            answers.append(first_answer(res.instance))
            restores.append(time.perf_counter() - t0)
            print(f"restore {i}: {restores[-1]:.2f} s to the first answer", flush=True)
            result.setdefault("restore_timings", []).append(res.timings)
            pipeline.stop(settings, res.instance)
        for i in range(opts.runs):
            if opts.cold in ("both", "fresh"):
                seconds, answer = cold_start(settings, f"cold{i}", args, root / f"inductor-{i}")
                cold_fresh.append(seconds)
                answers.append(answer)
                print(f"cold start {i}, empty compile cache: {seconds:.2f} s", flush=True)
            if opts.cold in ("both", "cached"):
                seconds, answer = cold_start(settings, f"cached{i}", args, kept_cache)
                cold_cached.append(seconds)
                answers.append(answer)
                print(f"cold start {i}, warm compile cache: {seconds:.2f} s", flush=True)
        result.update(restore_to_first_answer_s=spread(restores), identical=all(a == answers[0] for a in answers),
                      raw={"cold_fresh": cold_fresh, "cold_cached": cold_cached, "restore": restores})
        if cold_fresh:
            result["cold_start_fresh_cache_s"] = spread(cold_fresh)
        if cold_cached:
            result["cold_start_cached_s"] = spread(cold_cached)
        try:
            import torch

            result["torch"] = torch.__version__
            result["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except ImportError:
            pass
    finally:
        for inst in pipeline.list_instances(settings):
            if inst.alive():
                pipeline.stop(settings, inst)
        shutil.rmtree(root, ignore_errors=True)
    opts.out.write_text(json.dumps(result, indent=2))
    for key in ("cold_start_fresh_cache_s", "cold_start_cached_s", "restore_to_first_answer_s"):
        if key not in result:
            continue
        s = result[key]
        print(f"{key:28} min {s['min']:8.2f}  median {s['median']:8.2f}  max {s['max']:8.2f}  (n={s['n']})")
    print(f"snapshot {result['snapshot_s']:.2f} s, artifact {result['artifact_bytes'] / 2**30:.2f} GiB, "
          f"every answer identical: {result['identical']}")
    if not result["identical"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
