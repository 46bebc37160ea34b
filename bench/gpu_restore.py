"""Restore vs cold start of thaw's reference engine with weights in the GPU memory service (run on a GPU machine).

    python bench/gpu_restore.py OUT_DIR [--configs qwen3-0.6b,qwen3-8b] [--n 3] [--pretouch-gib 48]

One run measures, side by side, for each config:

* the host warmed first (``--pretouch-gib`` of memory touched by 8 processes: these
  machines' memory grows on first touch, ~3 s per 8 GiB, which would inflate whatever
  ran first);
* GMS loads of the weights from a warm and a cold page cache, beside ``dd`` of the same
  files from a cold cache (the disk's ceiling) and ``safetensors.torch.load_file`` to
  the GPU from a warm cache;
* cold starts of the same engine, process spawn → first answer, n times, with the
  engine loading its weights itself (``local``) and mapping them from the service (``gms``);
* one snapshot (phases, image size, the image's memory breakdown), then n restores →
  first answer with the image in the page cache and n with the page cache dropped, each
  answer checked against the canary, and two restores at once (GPU memory before and
  after, to show the weights are shared).

Everything is written to OUT_DIR/results.json after each step; a failed step is recorded
with the logs it left and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
LISTENING = "thaw-engine listening "


class Run:
    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out = out
        self.args = args
        self.results: dict[str, Any] = {"benchmark": "gpu_restore", "args": vars(args), "steps": {}, "errors": []}
        self.t0 = time.monotonic()

    def step(self, name: str, fn: Any, *a: Any, **kw: Any) -> Any:
        print(f"=== {name} (+{time.monotonic() - self.t0:.0f}s)", flush=True)
        try:
            value = fn(*a, **kw)
            self.results["steps"][name] = value
            print(json.dumps(value, default=str)[:2000], flush=True)
            return value
        except Exception as exc:
            traceback.print_exc()
            self.results["errors"].append({"step": name, "error": f"{type(exc).__name__}: {exc}",
                                           "traceback": traceback.format_exc()[-4000:]})
            return None
        finally:
            self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str))


# --- the machine -------------------------------------------------------------------------------------


def sh(cmd: str, timeout: float = 120) -> str:
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    return (p.stdout + p.stderr).strip()


def sysinfo() -> dict[str, Any]:
    import torch

    from thaw.criu import find_criu
    from thaw.cuda import driver_version

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gpus": sh("nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version --format=csv,noheader"),
        "driver": driver_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_total_kib": sh("awk '/MemTotal/{print $2}' /proc/meminfo"),
        "thp": sh("cat /sys/kernel/mm/transparent_hugepage/enabled"),
        "torch": torch.__version__,
        "criu": find_criu().version,
        "disk": sh("df -h /var/tmp | tail -1"),
        "python": sys.version.split()[0],
    }


def pretouch(gib: int) -> dict[str, Any]:
    """Touch ``gib`` GiB with 8 processes, then free it: the VM's memory has grown, later runs are not billed for it."""
    code = ("import mmap,sys; n=int(sys.argv[1])<<30; m=mmap.mmap(-1,n); z=b'\\1'*(1<<20)\n"
            "for o in range(0,n,1<<20): m[o:o+(1<<20)]=z\n")
    t = time.perf_counter()
    per = max(1, gib // 8)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(per)]) for _ in range(8)]
    for p in procs:
        p.wait()
    return {"gib": per * 8, "seconds": round(time.perf_counter() - t, 2),
            "mem_total_kib_after": sh("awk '/MemTotal/{print $2}' /proc/meminfo")}


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def gpu_used_mib() -> list[int]:
    out = sh("nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits")
    return [int(x) for x in out.split() if x.strip().isdigit()]


def stats(xs: list[float]) -> dict[str, float]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {}
    return {"n": len(xs), "min": round(min(xs), 3), "median": round(statistics.median(xs), 3), "max": round(max(xs), 3)}


# --- weights and the GPU memory service ----------------------------------------------------------


def ensure_weights(root: Path, config: str) -> dict[str, Any]:
    from thaw.engine.weights import checkpoint_bytes

    path = root / config
    if not (path / "config.json").exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "thaw", "engine", "make-weights", config, str(path)], check=True)
        made = round(time.perf_counter() - t, 2)
    else:
        made = 0.0
    return {"path": str(path), "bytes": checkpoint_bytes(path), "written_s": made}


class Gms:
    """A client of the GPU memory service the agent runs for one GPU (``thaw agent serve --gms``)."""

    def __init__(self, home: Path, gpu: int) -> None:
        from thaw.cuda import devices
        from thaw.gms import socket_path

        self.dir = home / "gms"
        self.device = DEVICE["gms"] if DEVICE["gms"].startswith("memfd:") else devices()[gpu].uuid
        self.sock = socket_path(self.dir, self.device)
        deadline = time.monotonic() + 120
        while not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no GPU memory service for {self.device} under {self.dir}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.status().device)
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def client(self) -> Any:
        from thaw.gms import Client

        return Client(self.sock)

    def evict_all(self) -> None:
        with self.client() as c:
            for s in c.status().sets:
                if s.key and s.holders == 0:
                    c.evict(s.key)


def gms_loads(gms: Gms, weights: Path, cold: bool = True) -> dict[str, Any]:
    from thaw.engine.weights import checkpoint_files
    from thaw.gms import WeightSpec
    from thaw.gms.plan import describe

    files = [str(f) for f in checkpoint_files(weights)]
    spec = WeightSpec(files=describe(files))
    total = sum(os.path.getsize(f) for f in files)
    out: dict[str, Any] = {"bytes": total}
    sh("cat " + " ".join(files) + " > /dev/null", timeout=600)  # into the page cache
    gms.evict_all()
    with gms.client() as c:
        t = time.perf_counter()
        st = c.prefetch(spec, wait=True)
        out["warm"] = {"wall_s": round(time.perf_counter() - t, 3), **(st.load.model_dump() if st.load else {})}
    gms.evict_all()
    if not cold:
        return out
    drop_caches()
    with gms.client() as c:
        t = time.perf_counter()
        st = c.prefetch(spec, wait=True)
        out["cold"] = {"wall_s": round(time.perf_counter() - t, 3), **(st.load.model_dump() if st.load else {})}
    drop_caches()
    t = time.perf_counter()
    sh("cat " + " ".join(files) + " > /dev/null", timeout=600)
    dd = time.perf_counter() - t
    out["cold_cat_gbps"] = round(total / dd / 1e9, 3)
    gms.evict_all()
    if DEVICE["gms"].startswith("memfd:"):
        return out  # no GPU to load into
    code = ("import sys, time, torch\nfrom safetensors.torch import load_file\n"
            "torch.zeros(1, device='cuda'); torch.cuda.synchronize(); t = time.perf_counter(); n = 0\n"
            "for f in sys.argv[1:]:\n"
            "    d = load_file(f, device='cuda'); n += sum(v.numel() * v.element_size() for v in d.values()); del d\n"
            "torch.cuda.synchronize(); print(n / (time.perf_counter() - t) / 1e9)\n")
    gms.evict_all()  # the engine asks for its own placement; two copies of a 65 GB model would not fit
    probe = Path(os.environ.get("BENCH_OUT", "/tmp")) / "safetensors_load.py"
    probe.write_text(code)
    out["safetensors_warm_gbps"] = round(float(sh(f"{sys.executable} {probe} " + " ".join(files),
                                                 timeout=600).split()[-1]), 3)
    return out


# --- the engine ----------------------------------------------------------------------------------


#: --cpu: a dry run of this script where there is no GPU (the memfd stand-in service, the tiny config)
CPU_ENGINE = ["--device", "cpu", "--dtype", "bfloat16", "--gms-device", "memfd:bench"]
DEVICE = {"engine": ["--device", "cuda"], "gms": "0"}


def engine_argv(weights: Path, kv_gb: float, weights_from: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "thaw.engine", "serve", "--weights", str(weights), *DEVICE["engine"],
            "--kv-gb", str(kv_gb), "--weights-from", weights_from, *extra]


def first_answer(canary: dict[str, Any], *, uds: Path | None = None, port: int | None = None,
                 deadline_s: float = 300) -> list[int]:
    """The greedy tokens for the canary's first prompt, retrying until the server answers (unix socket or TCP)."""
    deadline = time.monotonic() + deadline_s
    transport = httpx.HTTPTransport(uds=str(uds)) if uds is not None else None
    base = "http://engine" if uds is not None else f"http://127.0.0.1:{port}"
    with httpx.Client(transport=transport, base_url=base, timeout=120) as c:
        while True:
            try:
                r = c.post("/v1/completions", json={"prompt": canary["prompts"][0], "max_tokens": canary["max_tokens"],
                                                    "temperature": 0, "ignore_eos": True, "return_token_ids": True})
                r.raise_for_status()
                return r.json()["choices"][0]["token_ids"]
            except (httpx.TransportError, httpx.HTTPStatusError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)


def cold_start(weights: Path, kv_gb: float, weights_from: str, canary: dict[str, Any] | None,
               env: dict[str, str]) -> dict[str, Any]:
    """Spawn the engine as a plain process (not under thaw) and wait for its first answer."""
    port = _free_port()
    t = time.perf_counter()
    proc = subprocess.Popen(engine_argv(weights, kv_gb, weights_from, ["--port", str(port)]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    try:
        while not any(LISTENING in ln for ln in lines):
            if proc.poll() is not None:
                raise RuntimeError("engine exited:\n" + "".join(lines[-40:]))
            time.sleep(0.005)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            health = c.get("/health").json()
        prompt_canary = canary or health["canary"]
        tokens = first_answer(prompt_canary, port=port)
        wall = time.perf_counter() - t
        return {"to_first_answer_s": round(wall, 3), "startup": health["startup"],
                "tokens_match_canary": tokens == prompt_canary["tokens"][0], "canary": health["canary"]}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cycle(home: Path, label: str, weights: Path, kv_gb: float, n: int, extra: list[str],
          weights_from: str = "gms", caches: tuple[str, ...] = ("warm", "cold")) -> dict[str, Any]:
    """Launch under thaw, snapshot, restore n times warm and n times with the page cache dropped, then two at once."""
    from thaw import pipeline
    from thaw.cli.memory_view import memory_breakdown
    from thaw.config import Settings

    settings = Settings(home=home)
    t = time.perf_counter()
    inst = pipeline.launch(settings, engine_argv(weights, kv_gb, weights_from, ["--port", "0", *extra]),
                           name=f"b-{label}")
    try:
        pipeline.wait_ready(settings, inst, timeout=900)
    except Exception:
        raise RuntimeError("the engine never parked:\n" + inst.log_tail(60))
    parked = time.perf_counter() - t
    canary = inst.ready().canary
    snap = pipeline.snapshot(settings, inst.id, label)
    out: dict[str, Any] = {
        "launch_to_parked_s": round(parked, 3),
        "image_bytes": snap.manifest.size,
        "weights_in_gms_bytes": sum(w.bytes for w in snap.manifest.weights),
        "snapshot": snap.timings,
        "memory": memory_breakdown(snap.manifest),
        "freeze_report": snap.manifest.worker.freeze_report,
        "restores": [],
    }
    for cache in caches:
        for i in range(n):
            if cache == "cold":
                drop_caches()
            out["restores"].append({"page_cache": cache, **restore_once(settings, label, f"{label}-{cache}{i}", canary)})
    out["restore_warm"] = stats([r["to_first_answer_s"] for r in out["restores"] if r["page_cache"] == "warm"])
    out["restore_cold"] = stats([r["to_first_answer_s"] for r in out["restores"] if r["page_cache"] == "cold"])
    out["concurrent"] = two_at_once(settings, label, canary)
    out["canary"] = canary
    return out


def restore_once(settings: Any, artifact: str, name: str, canary: dict[str, Any], gpu: int | None = None
                 ) -> dict[str, Any]:
    from thaw import pipeline

    t = time.perf_counter()
    res = pipeline.restore(settings, artifact, name=name, gpu_target=gpu)
    restored = time.perf_counter() - t
    try:
        tokens = first_answer(canary, uds=res.instance.dir / "http.sock")
        answered = time.perf_counter() - t
    finally:
        pipeline.stop(settings, res.instance)
    return {"restore_s": round(restored, 3), "to_first_answer_s": round(answered, 3),
            "tokens_match_canary": tokens == canary["tokens"][0], "timings": res.timings,
            "thaw_report": res.thaw_report, "gpu_used_mib_after": gpu_used_mib()}


def two_at_once(settings: Any, artifact: str, canary: dict[str, Any]) -> dict[str, Any]:
    from thaw import pipeline

    before = gpu_used_mib()
    results: dict[str, Any] = {}

    def one(k: int) -> None:
        t = time.perf_counter()
        try:
            res = pipeline.restore(settings, artifact, name=f"{artifact}-twin{k}")
            tokens = first_answer(canary, uds=res.instance.dir / "http.sock")
            results[f"copy{k}"] = {"to_first_answer_s": round(time.perf_counter() - t, 3),
                                   "tokens_match_canary": tokens == canary["tokens"][0], "inst": res.instance}
        except Exception as exc:
            results[f"copy{k}"] = {"error": f"{type(exc).__name__}: {exc}"}

    threads = [threading.Thread(target=one, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    during = gpu_used_mib()
    for r in results.values():
        inst = r.pop("inst", None)
        if inst is not None:
            pipeline.stop(settings, inst)
    return {"gpu_used_mib_before": before, "gpu_used_mib_with_two": during, **results}


FLOOR_WORKER = """
import sys, torch, thaw.worker
from thaw.cuda import worker_hooks
worker_hooks.install()
x = torch.randn(1024, 1024, device="cuda")
y = (x @ x).sum().item()  # cuBLAS loaded, one kernel of each kind run
if sys.argv[1:] == ["graph"]:
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        x @ x
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        z = x @ x
    g.replay()
thaw.worker.quiesce(name="floor", canary=lambda: round(y, 2))
"""


def floor(home: Path, variant: str) -> dict[str, Any]:
    """The smallest torch CUDA worker's image, by kind: what every torch worker carries whatever it serves."""
    from thaw import pipeline
    from thaw.cli.memory_view import memory_breakdown
    from thaw.config import Settings

    settings = Settings(home=home)
    script = home / "floor_worker.py"
    script.write_text(FLOOR_WORKER)
    inst = pipeline.launch(settings, [sys.executable, str(script), variant], name=f"floor-{variant}")
    pipeline.wait_ready(settings, inst, timeout=300)
    snap = pipeline.snapshot(settings, inst.id, f"floor-{variant}")
    t = time.perf_counter()
    res = pipeline.restore(settings, f"floor-{variant}", name=f"floor-{variant}-r")
    restored = time.perf_counter() - t
    pipeline.stop(settings, res.instance)
    return {"image_bytes": snap.manifest.size, "memory": memory_breakdown(snap.manifest),
            "snapshot": snap.timings, "restore_s": round(restored, 3), "restore": res.timings}


# --- the production path: through the agent, and through the CLI ----------------------------------


class AgentProc:
    """``thaw agent serve`` on a unix socket in the bench's home (as a node would run it)."""

    def __init__(self, home: Path, log: Path, gms_allow: Path, criu: str | None = None) -> None:
        self.sock = home / "agent.sock"
        self.proc = subprocess.Popen([sys.executable, "-m", "thaw", "agent", "serve", "--socket", str(self.sock),
                                      "--home", str(home), "--log-level", "info", "--gms", "--gms-allow",
                                      str(gms_allow)], env={**os.environ, **({"THAW_CRIU": criu} if criu else {}), **(
                                          {"THAW_GMS_DEVICES": DEVICE["gms"]} if DEVICE["gms"].startswith("memfd:")
                                          else {})},
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("thaw agent serve did not come up:\n" + log.read_text()[-3000:])
            time.sleep(0.05)
        time.sleep(1.0)  # let it finish its CUDA initialisation before the first request

    def client(self) -> Any:
        from thaw.agent.client import AgentClient

        return AgentClient(self.sock)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def agent_restores(agent: AgentProc, artifact: str, canary: dict[str, Any], n: int) -> dict[str, Any]:
    """Restore → first answer, timed from the request to the agent (an API client, as the operator calls it)."""
    runs = []
    with agent.client() as c:
        for i in range(n):
            t = time.perf_counter()
            job = c.wait(c.restore(artifact, name=f"{artifact}-agent{i}").id)
            done = time.perf_counter() - t
            if job.state.value != "succeeded":
                raise RuntimeError(f"agent restore failed: {job.error}")
            worker = job.result["worker"]
            tokens = first_answer(canary, uds=Path(worker["control_dir"]) / "http.sock")
            runs.append({"job_done_s": round(done, 3), "to_first_answer_s": round(time.perf_counter() - t, 3),
                         "tokens_match_canary": tokens == canary["tokens"][0], "timings": job.result["timings"]})
            c.stop(worker["id"])
    return {"runs": runs, "to_first_answer": stats([r["to_first_answer_s"] for r in runs])}


def cli_restores(agent: AgentProc, artifact: str, canary: dict[str, Any], n: int) -> dict[str, Any]:
    """``thaw restore`` run as a command (Python start, imports, the agent round trip) → first answer."""
    runs = []
    for i in range(n):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "thaw", "restore", artifact, "--name", f"{artifact}-cli{i}",
                            "--agent", str(agent.sock), "--json"], capture_output=True, text=True, timeout=300)
        done = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"thaw restore failed: {p.stdout[-2000:]} {p.stderr[-2000:]}")
        out = json.loads(p.stdout)
        inst = out.get("instance") or out.get("worker") or (out.get("result") or {}).get("worker") or {}
        ctl = inst.get("dir") or inst.get("control_dir")
        tokens = first_answer(canary, uds=Path(ctl) / "http.sock")
        runs.append({"cli_done_s": round(done, 3), "to_first_answer_s": round(time.perf_counter() - t, 3),
                     "tokens_match_canary": tokens == canary["tokens"][0]})
        with agent.client() as c:
            c.stop(inst.get("id") or inst.get("name"))
    return {"runs": runs, "to_first_answer": stats([r["to_first_answer_s"] for r in runs])}


class Thp:
    """Transparent huge pages set to ``mode`` for a block of measurements (put back after)."""

    knob = Path("/sys/kernel/mm/transparent_hugepage/enabled")

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __enter__(self) -> Thp:
        self.before = self.knob.read_text().split("[")[1].split("]")[0]
        self.knob.write_text(self.mode)
        return self

    def __exit__(self, *exc: object) -> None:
        self.knob.write_text(self.before)


def warm_restores(home: Path, artifact: str, canary: dict[str, Any], n: int, tag: str,
                  criu: str | None = None) -> dict[str, Any]:
    """n warm restores in-process (the agent's code path without its HTTP), with the CRIU given."""
    from thaw.config import Settings

    settings = Settings(home=home, criu=criu) if criu else Settings(home=home)
    runs = [restore_once(settings, artifact, f"{artifact}-{tag}{i}", canary) for i in range(n)]
    return {"to_first_answer": stats([r["to_first_answer_s"] for r in runs]),
            "criu_restore": stats([r["timings"].get("criu_restore") for r in runs]),
            "all_match_canary": all(r["tokens_match_canary"] for r in runs),
            "runs": [{k: r[k] for k in ("to_first_answer_s", "tokens_match_canary", "timings")} for r in runs]}


def warm_files(weights: Path) -> None:
    """Read the weight files into the page cache (a cold-cache restore before may have dropped them)."""
    from thaw.engine.weights import checkpoint_files

    sh("cat " + " ".join(str(f) for f in checkpoint_files(weights)) + " > /dev/null", timeout=600)


def streamed_restores(home: Path, gms: Gms, weights: Path, artifact: str, canary: dict[str, Any],
                      n: int) -> dict[str, Any]:
    """Restores with the weights *not* resident: the service loads them from the page cache while CRIU runs."""
    from thaw.config import Settings

    runs = []
    for i in range(n):
        warm_files(weights)
        gms.evict_all()
        runs.append(restore_once(Settings(home=home), artifact, f"{artifact}-streamed{i}", canary))
    return {"to_first_answer": stats([r["to_first_answer_s"] for r in runs]),
            "all_match_canary": all(r["tokens_match_canary"] for r in runs),
            "runs": [{k: r[k] for k in ("to_first_answer_s", "tokens_match_canary", "timings", "thaw_report")}
                     for r in runs]}


def other_gpu(home: Path, weights: Path, artifact: str, canary: dict[str, Any]) -> dict[str, Any]:
    """A restore onto GPU 1 of a snapshot taken on GPU 0: its weights come from GPU 1's service (page cache)."""
    from thaw.config import Settings

    warm_files(weights)
    before = gpu_used_mib()
    r = restore_once(Settings(home=home), artifact, f"{artifact}-gpu1", canary, gpu=1)
    return {"gpu_used_mib_before": before, **r}


# --- main ------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--configs", default="qwen3-0.6b,qwen3-8b")
    ap.add_argument("--kv-gb", default="qwen3-0.6b=16,qwen3-8b=32,qwen3-32b=24")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--pretouch-gib", type=int, default=48)
    ap.add_argument("--home", type=Path, default=Path("/var/tmp/thaw-bench"))
    ap.add_argument("--weights-root", type=Path, default=Path("/var/tmp/thaw-weights"))
    ap.add_argument("--extra", default="", help="extra engine flags, e.g. '--graph-pool torch'")
    ap.add_argument("--skip", default="", help="steps to skip: floor,loads,coldloads,cold,coldrestores,cycle,thp,cli,agent,streamed,gpu1")
    ap.add_argument("--criu-fast", help="a second CRIU build to measure beside the default one (portable tree)")
    ap.add_argument("--agent-criu", help="the CRIU the agent runs (default: THAW_CRIU or the installed one)")
    ap.add_argument("--cpu", action="store_true", help="dry run without a GPU (tiny config, memfd service)")
    args = ap.parse_args()
    if args.cpu:
        DEVICE.update(engine=CPU_ENGINE, gms="memfd:bench")
    os.environ["BENCH_OUT"] = str(args.out)
    run = Run(args.out, args)
    skip = set(args.skip.split(","))
    kv = dict(item.split("=") for item in args.kv_gb.split(","))
    extra = args.extra.split()
    shutil.rmtree(args.home, ignore_errors=True)
    args.home.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run.results.setdefault("summary", {})
    info = run.step("system", sysinfo)
    if args.pretouch_gib:
        run.step("pretouch", pretouch, args.pretouch_gib)
    # the production set-up: the node agent, running a GPU memory service per GPU
    agent = run.step("agent_start", lambda: AgentProc(args.home, args.out / "agent.log", args.weights_root,
                                                      args.agent_criu))
    gms = run.step("gms_gpu0", lambda: Gms(args.home, 0))
    gpus = 1 if args.cpu else len(gpu_used_mib())
    env = {**os.environ, "THAW_GMS_DIR": str(args.home / "gms")}
    try:
        if "floor" not in skip and not args.cpu:
            for variant in ("plain", "graph"):
                run.step(f"floor_{variant}", floor, args.home, variant)
        for config in args.configs.split(","):
            weights = args.weights_root / config
            label = f"e-{config.replace('.', '')}"
            run.step(f"{config}/weights", ensure_weights, args.weights_root, config)
            if gms is not None and "loads" not in skip:
                run.step(f"{config}/gms_loads", gms_loads, gms, weights, "coldloads" not in skip)
            kv_gb = float(kv.get(config, 16))
            if "cold" not in skip:
                colds: dict[str, Any] = {}
                for source in ("local", "gms"):
                    runs = [run.step(f"{config}/cold_{source}_{i}", cold_start, weights, kv_gb, source, None, env)
                            for i in range(args.n)]
                    colds[source] = stats([r["to_first_answer_s"] for r in runs if r])
                summary[f"{config}/cold_to_first_answer"] = colds
            if "cycle" in skip:
                continue
            c = run.step(f"{config}/cycle_gms", cycle, args.home, label, weights, kv_gb, args.n, extra, "gms",
                         ("warm",) if "coldrestores" in skip else ("warm", "cold"))
            if not c:
                continue
            summary[f"{config}/restore"] = {"image_bytes": c["image_bytes"], "warm": c["restore_warm"],
                                            "cold": c["restore_cold"], "concurrent": {
                                                k: v for k, v in c["concurrent"].items()}}
            if "thp" not in skip:
                with Thp("always"):
                    t = run.step(f"{config}/thp_always", warm_restores, args.home, label, c["canary"], args.n, "thp")
                    if t:
                        summary[f"{config}/restore_thp_always"] = t["to_first_answer"]
                    if agent is not None:
                        a = run.step(f"{config}/agent_thp_always", agent_restores, agent, label, c["canary"], args.n)
                        if a:
                            summary[f"{config}/restore_via_agent_thp_always"] = a["to_first_answer"]
                        cl = None if "cli" in skip else run.step(f"{config}/cli_thp_always", cli_restores, agent,
                                                                 label, c["canary"], args.n)
                        if cl:
                            summary[f"{config}/restore_via_cli_thp_always"] = cl["to_first_answer"]
                    if args.criu_fast:
                        f = run.step(f"{config}/criu_fast_thp_always", warm_restores, args.home, label, c["canary"],
                                     args.n, "fastthp", args.criu_fast)
                        if f:
                            summary[f"{config}/restore_criu_fast_thp_always"] = f["to_first_answer"]
            if agent is not None:
                a = run.step(f"{config}/agent", agent_restores, agent, label, c["canary"], args.n)
                if a:
                    summary[f"{config}/restore_via_agent"] = a["to_first_answer"]
            if gms is not None and "streamed" not in skip:
                st = run.step(f"{config}/weights_streamed", streamed_restores, args.home, gms, weights, label,
                              c["canary"], args.n)
                if st:
                    summary[f"{config}/restore_weights_streamed"] = st["to_first_answer"]
            if args.criu_fast:
                f = run.step(f"{config}/criu_fast", warm_restores, args.home, label, c["canary"], args.n, "fast",
                             args.criu_fast)
                if f:
                    summary[f"{config}/restore_criu_fast"] = f["to_first_answer"]
            if gpus > 1 and "gpu1" not in skip:
                g = run.step(f"{config}/other_gpu", other_gpu, args.home, weights, label, c["canary"])
                if g:
                    summary[f"{config}/restore_onto_gpu1"] = {k: g[k] for k in (
                        "to_first_answer_s", "tokens_match_canary", "gpu_used_mib_before", "gpu_used_mib_after")}
            run.save()
    finally:
        if gms is not None:
            run.step("gms_status", lambda: gms.client().status().model_dump(mode="json"))
        if agent is not None:
            agent.stop()
    summary["conditions"] = {"host_pretouched_gib": args.pretouch_gib, "thp_default": (info or {}).get("thp"),
                             "n": args.n, "page_cache": "warm: image and weights files cached; cold: "
                             "drop_caches before each restore", "date": (info or {}).get("date")}
    run.save()
    print(json.dumps(summary, indent=2))
    return 1 if run.results["errors"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
