"""``thaw demo``: cold-start a real LLM worker, snapshot it, restore it twice at once, compare.

The worker is thaw's reference engine (Qwen3 architecture, random weights written to a
real safetensors checkpoint) on the CPU, so the demo runs on any Linux machine with
CRIU; its cold start is genuinely expensive (imports, weight load, KV allocation,
warm-up, canary), which is exactly what a restore skips.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from thaw import pipeline
from thaw.config import Settings
from thaw.errors import ThawError
from thaw.pipeline.instances import Instance

PROMPT = "The fastest way to start a GPU inference worker is"
console = Console()


def run_demo(home: Path, *, config: str = "qwen3-0.6b", keep: bool = False) -> dict[str, Any]:
    """Run the demo under ``home``; prints a table and returns the figures."""
    settings = Settings(home=home, store=str(home / "artifacts"))
    store_dir = Path(settings.store_url)
    weights = home / "weights" / config
    started: list[Instance] = []
    try:
        with console.status("") as status:
            if not (weights / "config.json").exists():
                status.update(f"writing random {config} weights to {weights} (once)")
                _engine("make-weights", config, str(weights))

            status.update(f"cold start: launching the {config} worker (imports, weights, KV, warm-up, canary)")
            t0 = time.perf_counter()
            orig = pipeline.launch(settings, [sys.executable, "-m", "thaw.engine", "serve", "--config", config,
                                              "--weights", str(weights), "--device", "cpu"], name="demo-llm")
            started.append(orig)
            pipeline.wait_ready(settings, orig, timeout=900)
            t_ready = time.perf_counter() - t0

            artifact = f"demo-{int(time.time())}"
            status.update(f"snapshot of the warmed worker into {artifact} (original keeps running)")
            snap = pipeline.snapshot(settings, orig.id, artifact, leave_running=True)
            cold_answer, t_first = _ask(orig, deadline_s=120)
            cold_total = t_ready + t_first

            status.update("restoring two copies at once, each in fresh namespaces")
            t1 = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(pipeline.restore, settings, artifact, name=f"demo-copy-{i}") for i in (1, 2)]
                restored = [f.result() for f in futures]
            started += [r.instance for r in restored]
            answers = [_ask(r.instance, deadline_s=60) for r in restored]
            t_both = time.perf_counter() - t1
    finally:
        if not keep:
            for inst in started:
                try:
                    pipeline.stop(settings, inst)
                except ThawError:
                    pass

    table = Table(title=f"thaw demo: {config} reference engine on CPU")
    table.add_column("")
    table.add_column("cold start", justify="right")
    for i in (1, 2):
        table.add_column(f"restored copy {i}", justify="right")
    table.add_row("ready to serve after", f"{cold_total:.2f} s",
                  *(f"{r.timings['total'] + a[1]:.2f} s" for r, a in zip(restored, answers)))
    table.add_row("  of which", f"launch+warm-up {t_ready:.2f} s",
                  *(f"CRIU {r.timings['criu_restore']:.2f} s" for r in restored))
    same = [a[0] == cold_answer for a in answers]
    table.add_row("greedy answer identical", "(reference)", *("yes" if s else "NO" for s in same))
    table.add_row("canary at restore", "-", *("passed" if r.canary_checked else "none" for r in restored))
    console.print(table)
    console.print(f"artifact {artifact}: {snap.manifest.size / 2**30:.2f} GiB in {store_dir}, snapshot took "
                  f"{snap.timings['total']:.2f} s (dump {snap.timings['dump']:.2f} s); both copies up "
                  f"{t_both:.2f} s after the restore began")
    console.print(f"answer: {cold_answer!r}")
    if not all(same):
        raise ThawError("a restored copy answered differently from the original")
    return {"cold_start_s": cold_total, "restore_s": [r.timings["total"] for r in restored],
            "artifact_bytes": snap.manifest.size, "identical": all(same)}


def _engine(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "thaw.cli.main", "engine", *args], check=True,
                   stdout=subprocess.DEVNULL)


def _ask(inst: Instance, *, deadline_s: float) -> tuple[str, float]:
    """Greedy completion from a worker over its unix socket; (text, seconds until it answered)."""
    sock = inst.dir / "http.sock"
    t0 = time.perf_counter()
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=deadline_s) as client:
                r = client.post("http://worker/v1/completions",
                                json={"prompt": PROMPT, "max_tokens": 16, "temperature": 0})
                r.raise_for_status()
                return r.json()["choices"][0]["text"], time.perf_counter() - t0
        except (httpx.TransportError, FileNotFoundError):
            if time.monotonic() > deadline or not inst.alive():
                raise ThawError(f"worker {inst.id} did not answer on {sock}", hint=f"log: {inst.log}") from None
            time.sleep(0.02)
