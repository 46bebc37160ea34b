"""Benchmark thaw's reference engine: cold-start breakdown and decode throughput.

    python bench/engine_bench.py OUT.json [--configs qwen3-0.6b,qwen3-8b] [--batches 1,8] [--decode-tokens 128]

For each config it writes the checkpoint if missing (timed), then:

* ``cold_start``: starts ``python -m thaw.engine serve`` as its own process — not under
  thaw, so this is the plain cold start every restore is compared with — and records
  the engine's phase breakdown (/health) and the wall time from spawning the process
  to its "listening" line; one greedy completion checks that the served tokens are the
  canary's;
* ``decode``: in a fresh child process (so each config has the GPU to itself), builds
  the same engine (``thaw.engine.lifecycle.build``: same weights, KV cache, CUDA graphs)
  and, per batch size B, runs B greedy requests of ``--decode-tokens`` tokens admitted
  together; ``tokens_per_s`` = B / mean wall time of the decode-only steps at batch B
  (each step ends with the sampled ids on the host, so a step's wall time is its real
  cost). Measured in-process because over HTTP, requests that do not overlap exactly
  never form a batch of B.

Results go to OUT.json after every config, so a failure keeps what was measured; the
exit status is 1 if any config failed. Defaults: qwen3-0.6b and qwen3-8b on a GPU,
tiny on the CPU (to check this script where there is no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import httpx

LISTENING = "thaw-engine listening "


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = "cuda" if cuda else "cpu"
    configs = args.configs.split(",") if args.configs else (["qwen3-0.6b", "qwen3-8b"] if cuda else ["tiny"])
    report: dict[str, Any] = {"host": _host(torch, cuda), "device": device, "args": vars(args), "results": [],
                              "errors": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for config in configs:
        try:
            report["results"].append(bench_config(config, device, args))
        except Exception as exc:  # keep going: the other configs' figures are still worth having
            traceback.print_exc()
            report["errors"].append({"config": config, "error": f"{type(exc).__name__}: {exc}"})
        out.write_text(json.dumps(report, indent=2))
    print(json.dumps(_summary(report), indent=2))
    return 1 if report["errors"] else 0


def bench_config(config: str, device: str, args: argparse.Namespace) -> dict[str, Any]:
    weights = Path(args.weights_root) / config
    result: dict[str, Any] = {"config": config, "device": device, "weights": _ensure_weights(config, weights, device)}
    result["page_cache"] = "dropped" if args.drop_caches and _drop_caches() else "warm"
    server = _Server.start(weights, device, args)
    try:
        health = server.get("/health")
        result["cold_start"] = {"spawn_to_listening_s": round(server.listening_after, 3), **health["startup"]}
        print(f"[{config}] {server.summary}", flush=True)
        canary = health["canary"]
        served = server.complete(canary["prompts"][0], canary["max_tokens"])
        result["served_canary_tokens"] = served == canary["tokens"][0]
        if not result["served_canary_tokens"]:
            raise RuntimeError(f"the server answered {served}, its canary recorded {canary['tokens'][0]}")
    finally:
        result["exit_status"] = server.stop()
    result["decode"] = _decode_in_child(weights, device, args)
    for b, d in result["decode"].items():
        print(f"[{config}] batch {b}: {d['tokens_per_s']:.1f} tok/s ({d['step_ms']:.2f} ms/step)", flush=True)
    return result


def decode_in_process(weights: str, device: str, batches: list[int], tokens: int, kv_gb: float) -> dict[str, Any]:
    """Decode throughput of the engine as ``serve`` builds it; run in a child process (see _decode_in_child)."""
    import torch

    from thaw.engine.engine import Request, SamplingParams
    from thaw.engine.lifecycle import build
    from thaw.engine.options import ServeOptions
    from thaw.engine.startup import StartupClock

    engine = build(ServeOptions(weights=Path(weights), device=device, max_batch=max(batches), kv_gb=kv_gb),
                   StartupClock())
    results = {}
    for batch in batches:
        for i in range(batch):
            prompt = engine.tokenizer.encode(f"request {i:03d} of a batch of {batch:03d}: ")
            engine.add(Request(prompt, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)))
        steps: list[float] = []
        with torch.inference_mode():
            while engine.has_work():
                t0 = time.perf_counter()
                engine.step()
                if engine.last_step.prefills == 0 and engine.last_step.decoded == batch:
                    steps.append(time.perf_counter() - t0)
        if not steps:
            raise RuntimeError(f"no decode step ran at batch {batch}")
        step_s = sum(steps) / len(steps)
        results[str(batch)] = {"tokens_per_s": batch / step_s, "step_ms": step_s * 1e3, "steps": len(steps),
                               "tokens_per_request": tokens, "graphs": engine.graphs is not None}
    return results


def _decode_in_child(weights: Path, device: str, args: argparse.Namespace) -> dict[str, Any]:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import engine_bench; "
            f"print('RESULT ' + json.dumps(engine_bench.decode_in_process({str(weights)!r}, {device!r}, "
            f"{args.batches!r}, {args.decode_tokens!r}, {args.decode_kv_gb!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=args.start_timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the decode benchmark failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


class _Server:
    """One ``python -m thaw.engine serve`` process on a free TCP port."""

    def __init__(self, proc: subprocess.Popen[str], base: str, listening_after: float, lines: list[str]) -> None:
        self.proc = proc
        self.http = httpx.Client(base_url=base, timeout=600)
        self.listening_after = listening_after
        self.lines = lines

    @classmethod
    def start(cls, weights: Path, device: str, args: argparse.Namespace) -> _Server:
        cmd = [sys.executable, "-m", "thaw.engine", "serve", "--weights", str(weights), "--device", device,
               "--port", "0", "--log-level", "warning", "--max-batch", str(max(args.batches))]
        if args.kv_gb is not None:
            cmd += ["--kv-gb", str(args.kv_gb)]
        env = {k: v for k, v in os.environ.items() if k != "THAW_RUN_DIR"}  # a plain start, not under thaw
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines: list[str] = []
        listen: dict[str, str] = {}

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if line.startswith(LISTENING):
                    listen.update(json.loads(line[len(LISTENING):]))
                    listen["at"] = str(time.perf_counter() - t0)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + args.start_timeout
        while "at" not in listen:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the engine did not start:\n" + "".join(lines[-40:]))
            time.sleep(0.02)
        return cls(proc, f"http://{listen['tcp']}", float(listen["at"]), lines)

    @property
    def summary(self) -> str:
        return next((line.strip() for line in self.lines if line.startswith("thaw-engine cold start")), "")

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def complete(self, prompt: str, tokens: int) -> list[int]:
        r = self.http.post("/v1/completions", json={"prompt": prompt, "max_tokens": tokens, "temperature": 0,
                                                    "ignore_eos": True, "return_token_ids": True})
        r.raise_for_status()
        return r.json()["choices"][0]["token_ids"]

    def stop(self) -> int | None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _ensure_weights(config: str, path: Path, device: str) -> dict[str, Any]:
    from thaw.engine.config import get_config
    from thaw.engine.weights import checkpoint_bytes, make_weights, read_config

    if (path / "config.json").exists() and read_config(path).name == config:
        return {"path": str(path), "bytes": checkpoint_bytes(path), "made": False}
    t0 = time.perf_counter()
    out = make_weights(get_config(config), path, device=device, force=True)
    seconds = time.perf_counter() - t0
    print(f"[{config}] wrote {out.bytes / 1e9:.2f} GB of weights in {seconds:.1f}s", flush=True)
    return {"path": str(path), "bytes": out.bytes, "made": True, "make_seconds": round(seconds, 3),
            "make_gb_per_s": round(out.bytes / seconds / 1e9, 3), "files": out.files}


def _drop_caches() -> bool:
    """Drop the page cache so the weights are read from disk (root only); True if it worked."""
    from thaw.bench.host import drop_caches
    from thaw.errors import HostError

    try:
        drop_caches()
        return True
    except HostError as exc:
        print(f"{exc.message}; the cold start reads warm files", flush=True)
        return False


def _host(torch: Any, cuda: bool) -> dict[str, Any]:
    host = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.node(),
            "cpus": os.cpu_count()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        host |= {"gpu": props.name, "gpu_memory_bytes": props.total_memory, "cuda": torch.version.cuda}
    return host


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        r["config"]: {
            "cold_start_s": r.get("cold_start", {}).get("total"),
            "phases": r.get("cold_start", {}).get("phases"),
            "decode_tokens_per_s": {b: round(d["tokens_per_s"], 1) for b, d in r.get("decode", {}).items()},
        }
        for r in report["results"]
    } | ({"errors": report["errors"]} if report["errors"] else {})


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="where to write the JSON results")
    p.add_argument("--configs",
                   help="comma-separated config names (default: qwen3-0.6b,qwen3-8b on a GPU, tiny on the CPU)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--weights-root", default=os.environ.get("THAW_BENCH_WEIGHTS", "/var/tmp/thaw-bench-weights"),
                   help="checkpoints live in ROOT/<config> (written if missing) [env THAW_BENCH_WEIGHTS]")
    p.add_argument("--batches", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--kv-gb", type=float, help="KV-cache size of the cold start (default: the engine's own)")
    p.add_argument("--decode-kv-gb", type=float, default=8.0,
                   help="KV-cache size of the decode benchmark (enough for the batches at full context)")
    p.add_argument("--drop-caches", action="store_true", help="drop the page cache before each cold start (root)")
    p.add_argument("--start-timeout", type=float, default=900.0)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
