"""CPU soak: snapshot / restore / answer / stop, N cycles with real CRIU, counting failures and leaks.

    python bench/soak.py OUT.json [--cycles 1000] [--home DIR] [--check-every 25]

Runs as root on a CPU host. One worker (tests/workers/serve.py: random state made at
warm-up, HTTP on a unix socket once it goes on) is launched and snapshotted once as the
first generation. Each cycle then restores an artifact, checks that the copy answers
with the original's state, parks it again, snapshots it (the next generation), and stops
it. Even cycles restore the first generation (their snapshot is a second generation);
odd cycles restore the second generation the cycle before made (their snapshot, a third
generation, is deleted at once). So every cycle takes one snapshot and one restore, and
half of the restores are of restored workers.

After every ``check_every`` cycles and at the end it counts what could leak, and the end
result fails on any growth over the figures taken after the first cycle:

* processes: sandboxes of this thaw home (their environment names its run directory);
* mounts: mounts of the host's mount table under the thaw home (thaw mounts only inside sandboxes;
  the whole table is reported too, not judged: other work on the host mounts and unmounts);
* namespaces: network namespaces this process or a sandbox of this home holds;
* descriptors: this process's open descriptors;
* files: entries of the home's staging, the store's .staging and .trash, artifacts;
* memory: this process's resident set (reported, not judged: Python's allocator keeps pages).

The JSON written to OUT holds the conditions (host, kernel, CRIU, CPUs, load), the
per-phase timings (median, p99, max), every failure with its message, and the counts.
Exit status 0 only with no failure and no leak.
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
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from thaw import pipeline
from thaw.config import Settings
from thaw.criu import find_criu
from thaw.pipeline import cleanup
from thaw.store import open_store

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from workers import SERVE, processes_of, stop_everything  # noqa: E402 - the test workers and their helpers

PHASES = ("restore", "answer", "park", "snapshot", "stop", "delete")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--home", type=Path, help="thaw home to use (default: a fresh temporary directory)")
    ap.add_argument("--check-every", type=int, default=25)
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="thaw-soak-"))
    try:
        result = soak(home, args.cycles, args.check_every, progress=lambda s: print(s, flush=True))
    finally:
        stop_everything(home)
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cycles_done']} cycles, {len(result['failures'])} failures, leaks: {result['leaks'] or 'none'}")
    return 0 if result["ok"] else 1


def soak(home: Path, cycles: int, check_every: int, progress: Any = print) -> dict[str, Any]:
    settings = Settings(home=home, store=str(home / "artifacts"))
    store = open_store(settings.store_url)
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    load_start = os.getloadavg()
    env = {**os.environ, "TEST_LOG": str(work / "worker-data.log")}
    original = pipeline.launch(settings, [sys.executable, str(SERVE)], name="soak", env=env, cwd=work)
    pipeline.wait_ready(settings, original, timeout=60)
    pipeline.snapshot(settings, "soak", "gen1", store=store)
    token = None
    timings: dict[str, list[float]] = {p: [] for p in PHASES}
    failures: list[dict[str, Any]] = []
    baseline: dict[str, int] | None = None
    samples: list[dict[str, Any]] = []
    previous: str | None = None  # the second generation the last (even) cycle made
    done = 0
    t_start = time.perf_counter()
    for i in range(cycles):
        source = "gen1" if i % 2 == 0 or previous is None else previous
        try:
            token = _cycle(settings, store, i, source, token, timings)
            if source == "gen1":
                previous = f"s{i}"
            else:
                _timed(timings, "delete", lambda s=source, n=i: (store.delete(s), store.delete(f"s{n}")))
                previous = None
        except Exception as exc:  # noqa: BLE001 - a soak records every failure and goes on
            failures.append({"cycle": i, "source": source, "error": f"{type(exc).__name__}: {exc}"[:2000],
                             "trace": traceback.format_exc(limit=8)[-3000:]})
            previous = None
            _clean_up(settings, store)
        done += 1
        if i == 0:
            baseline = counts(settings, store)
        if (i + 1) % check_every == 0 or i + 1 == cycles:
            sample = {"cycle": i + 1, "elapsed_s": round(time.perf_counter() - t_start, 1), **counts(settings, store)}
            samples.append(sample)
            progress(json.dumps(sample))
    for name in store.list():  # what is left by design: gen1 and at most one second generation
        if name.name != "gen1":
            store.delete(name.name)
    before_gc = counts(settings, store)
    swept = cleanup.sweep(settings, store, older_than_s=0)  # `thaw gc --older-than 0`: every stopped copy's dir
    final = counts(settings, store)
    leaks = _leaks(baseline or final, final)
    criu = find_criu(settings.criu)
    return {
        "what": "CPU soak: restore, answer, park, snapshot (next generation), stop; real CRIU",
        "started_at": started.isoformat(),
        "conditions": {
            "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "criu": f"{criu.version} ({criu.source})", "python": platform.python_version(),
            "thaw_commit": _commit(),
            "load_at_start": [round(x, 2) for x in load_start],
            "load_at_end": [round(x, 2) for x in os.getloadavg()],
            "worker": "tests/workers/serve.py (random state, HTTP on a unix socket)",
            "image_bytes": store.manifest("gen1").size,
        },
        "cycles_asked": cycles,
        "cycles_done": done,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "failures": failures,
        "baseline_after_cycle_1": baseline,
        "before_gc": before_gc,
        "gc_pruned_instance_dirs": len(swept.instances),
        "final": final,
        "samples": samples,
        "leaks": leaks,
        "timings_s": {p: _stats(v) for p, v in timings.items() if v},
        "ok": not failures and not leaks and done == cycles,
    }


def _cycle(settings: Settings, store: Any, i: int, source: str, token: str | None,
           timings: dict[str, list[float]]) -> str:
    copy = _timed(timings, "restore", lambda: pipeline.restore(settings, source, store=store, name=f"c{i}")).instance

    def answer() -> str:
        with _client(copy.dir) as http:
            state = http.get("/state").json()
            if state["outcome"] != "thawed" or state["info"]["artifact"] != source:
                raise AssertionError(f"copy of {source} says {state['outcome']} / {state['info']}")
            if http.post("/incr").json()["counter"] != state["counter"] + 1:
                raise AssertionError("the counter did not count")
        return str(state["token"])

    got = _timed(timings, "answer", answer)
    if token is not None and got != token:
        raise AssertionError(f"cycle {i}: the copy of {source} has token {got}, the original had {token}")

    def park() -> None:
        with _client(copy.dir) as http:
            http.post("/park")
        pipeline.wait_ready(settings, copy, timeout=30)

    _timed(timings, "park", park)
    _timed(timings, "snapshot", lambda: pipeline.snapshot(settings, copy.id, f"s{i}", store=store,
                                                          leave_running=True))
    _timed(timings, "stop", lambda: pipeline.stop(settings, copy))
    return got


def _client(control_dir: Path) -> httpx.Client:
    sock = control_dir / "http.sock"
    deadline = time.monotonic() + 30
    while not sock.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the copy never served on {sock}")
        time.sleep(0.005)
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock), retries=3), base_url="http://worker",
                        timeout=30)


def _timed(timings: dict[str, list[float]], phase: str, fn: Any) -> Any:
    t0 = time.perf_counter()
    out = fn()
    timings[phase].append(time.perf_counter() - t0)
    return out


def _clean_up(settings: Settings, store: Any) -> None:
    """After a failed cycle: stop every copy, delete every artifact but the first generation."""
    for inst in pipeline.list_instances(settings):
        if inst.alive() and inst.origin == "restored":
            pipeline.stop(settings, inst)
    for m in store.list():
        if m.name != "gen1":
            store.delete(m.name)


def counts(settings: Settings, store: Any) -> dict[str, int]:
    """What could leak, counted now (see the module docstring)."""
    sandboxes = processes_of(settings.home)
    netns = set()
    for pid in ["self", *map(str, processes_of(settings.home))]:
        try:
            netns.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
        except OSError:
            continue
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("net:"):
                netns.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            continue
    root = Path(settings.store_url)
    return {
        "processes": len(sandboxes),
        "mounts": _mounts_under(settings.home),
        "host_mounts": sum(1 for _ in open("/proc/self/mountinfo")),
        "netns": len(netns),
        "fds": len(os.listdir("/proc/self/fd")),
        "staging_entries": _entries(settings.staging_dir),
        "store_staging_entries": _entries(root / ".staging") + _entries(root / ".trash"),
        "artifacts": len(store.list()),
        "instance_dirs": _entries(settings.instances_dir),
        "rss_kib": _rss_kib(),
    }


def _mounts_under(home: Path) -> int:
    prefix = str(home).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4].startswith(prefix) or line.split()[3].startswith(prefix))


def _entries(d: Path) -> int:
    try:
        return sum(1 for e in d.iterdir() if e.name != ".scratch")
    except FileNotFoundError:
        return 0


def _commit() -> str:
    import subprocess

    out = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"], check=False, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _leaks(baseline: dict[str, int], final: dict[str, int]) -> dict[str, str]:
    """Counts that grew since the first cycle (the artifacts count is expected to drop to the first generation)."""
    out = {}
    for key in ("processes", "mounts", "netns", "fds", "staging_entries", "store_staging_entries"):
        if final[key] > baseline[key]:
            out[key] = f"{baseline[key]} after the first cycle, {final[key]} at the end"
    if final["instance_dirs"]:
        out["instance_dirs"] = f"{final['instance_dirs']} left after thaw gc --older-than 0"
    if final["artifacts"] != 1:
        out["artifacts"] = f"{final['artifacts']} left, expected only gen1"
    return out


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(values), "median": round(statistics.median(ordered), 4),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4),
            "max": round(ordered[-1], 4)}


if __name__ == "__main__":
    sys.exit(main())
