"""``thaw demo``: cold-start a real inference worker, snapshot it, restore copies, compare.

The worker (demo/worker.py) is a semantic-search service: it compiles a transformer encoder
with ``torch.compile`` and embeds a corpus before it parks at its quiesce point — the kind of
warm-up a restore skips. The demo runs on the CPU, so it works on any Linux host with CRIU.
"""

from __future__ import annotations

import os
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

QUERY = "restore a warm gpu worker in seconds"
console = Console(stderr=True)


def run_demo(home: Path, *, keep: bool = False) -> dict[str, Any]:
    """Run the demo under ``home``; prints a table and returns the figures."""
    settings = Settings(home=home, store=str(home / "artifacts"))
    started: list[Instance] = []
    try:
        with console.status("") as status:
            status.update("cold start: the worker imports torch, compiles its encoder, builds its index")
            t0 = time.perf_counter()
            orig = pipeline.launch(settings, [sys.executable, "-m", "thaw.demo.worker"], name="demo-search",
                                   env=_worker_env())
            started.append(orig)
            pipeline.wait_ready(settings, orig, timeout=900)
            t_parked = time.perf_counter() - t0

            artifact = f"demo-{int(time.time())}"
            status.update(f"snapshot of the warm worker into {artifact} (the original keeps running)")
            snap = pipeline.snapshot(settings, orig.id, artifact, leave_running=True)
            reference, t_answer = _ask(orig)
            cold = t_parked + t_answer

            status.update("restoring one copy")
            one = _restore_and_ask(settings, artifact, "demo-copy-1")
            started.append(one[0].instance)
            status.update("restoring two more copies at once, each in fresh namespaces")
            with ThreadPoolExecutor(2) as pool:
                pair = list(pool.map(lambda n: _restore_and_ask(settings, artifact, n), ("demo-copy-2", "demo-copy-3")))
            started += [p[0].instance for p in pair]
    finally:
        if not keep:
            for inst in started:
                try:
                    pipeline.stop(settings, inst)
                except ThawError:
                    pass

    copies = [one, *pair]
    table = Table(title="thaw demo: a torch.compile'd search worker on the CPU")
    table.add_column("")
    table.add_column("cold start", justify="right")
    table.add_column("restore (alone)", justify="right")
    table.add_column("2 restores at once", justify="right")
    table.add_row("ready and answering after", f"{cold:.2f} s", f"{one[2]:.2f} s",
                  " / ".join(f"{p[2]:.2f} s" for p in pair))
    table.add_row("  of which", f"warm-up {t_parked:.2f} s", f"CRIU restore {one[0].timings['criu_restore']:.2f} s",
                  " / ".join(f"{p[0].timings['criu_restore']:.2f} s" for p in pair))
    table.add_row("same answer as the original", "(reference)", *(
        "yes" if all(c[1] == reference for c in group) else "NO" for group in ([one], pair)))
    table.add_row("canary checked before serving", "-", *(
        "passed" if all(c[0].canary_checked for c in group) else "none" for group in ([one], pair)))
    Console().print(table)
    Console().print(f"artifact {artifact}: {snap.manifest.size / 2**20:.0f} MiB, digest {snap.manifest.digest}, "
                    f"snapshot took {snap.timings['total']:.2f} s; store: {settings.store_url} "
                    f"(thaw ls --home {home})")
    identical = all(c[1] == reference for c in copies)
    if not identical:
        raise ThawError("a restored copy answered differently from the original")
    return {"cold_start_s": cold, "restore_s": [c[2] for c in copies], "artifact_bytes": snap.manifest.size,
            "identical": identical}


def _restore_and_ask(settings: Settings, artifact: str, name: str) -> tuple[pipeline.RestoreResult, Any, float]:
    t0 = time.perf_counter()
    res = pipeline.restore(settings, artifact, name=name)
    hits, _ = _ask(res.instance)
    return res, hits, time.perf_counter() - t0


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    # compile in-process: a pool of compile workers would be dumped with the worker for nothing
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    return env


def _ask(inst: Instance, deadline_s: float = 60.0) -> tuple[Any, float]:
    """The worker's hits for QUERY over its unix socket; (hits, seconds until it answered)."""
    sock = inst.dir / "http.sock"
    t0 = time.perf_counter()
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=deadline_s) as client:
                r = client.get("http://worker/search", params={"q": QUERY, "k": 5})
                r.raise_for_status()
                return r.json()["hits"], time.perf_counter() - t0
        except (httpx.TransportError, FileNotFoundError):
            if time.monotonic() > deadline or not inst.alive():
                raise ThawError(f"worker {inst.id} did not answer on {sock}", hint=f"log: {inst.log}") from None
            time.sleep(0.01)
