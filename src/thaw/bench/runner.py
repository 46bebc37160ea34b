"""``thaw bench``: cold starts, one snapshot, restores one at a time and C at once — one run, one result.

::

    warm the host (--pretouch)                       recorded in machine.host
    for each page-cache state (warm; dropped with --drop-caches):
        n cold starts: launch → parked → (release → first answer) → stop
    one snapshot: launch → parked → snapshot          (or an existing --artifact)
    the floor: GPU bytes / pinned H2D bandwidth, image / read bandwidth
    for each page-cache state:
        N restores one at a time:   restore → first answer, checked → stop
        N restores in groups of C:  C at once → every first answer → stop them

Each worker is stopped as soon as it answered, so every cold start and restore finds the
machine as the previous one left it. Whatever was started is stopped, and an artifact the
run made is deleted (unless kept), also when the run fails or is interrupted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from thaw.bench import host
from thaw.bench.answer import ask
from thaw.bench.machine import collect
from thaw.bench.operations import Handle, Operations
from thaw.bench.phases import from_timings, node
from thaw.bench.schema import (
    Answer,
    BenchResult,
    ColdStart,
    Failure,
    Floor,
    HostWarmth,
    PageCache,
    Phase,
    Plan,
    Restore,
    Snapshot,
)
from thaw.bench.summary import cold_summary, floor, summarize
from thaw.errors import ConfigError, ThawError
from thaw.store import Manifest, check_name

#: what the runner tells its caller: (stage, items done, items in the stage, detail)
Listener = Callable[[str, int, int, str], None]
#: each sample as soon as it is measured (a run cut short by SIGKILL still leaves them): (kind, sample)
SampleSink = Callable[[str, BaseModel], None]


def _quiet(*args: object) -> None:
    return None


@dataclass
class BenchOptions:
    name: str
    argv: list[str]
    artifact: str | None = None  # an existing artifact: no snapshot is taken
    cold: int = 3
    restores: int = 10
    concurrency: int = 1
    drop_caches: bool = False
    pretouch_bytes: int = 0
    gpus: list[str] = field(default_factory=list)
    answer: Answer = field(default_factory=lambda: Answer(kind="canary"))
    env: dict[str, str] | None = None  # None: this process's environment, as `thaw run` gives it
    cwd: Path = field(default_factory=Path.cwd)
    ready_timeout: float = 900.0
    time_limit: float | None = None  # seconds: no new cold start or restore begins after it
    keep_artifact: bool = False
    measure_h2d: bool = True
    criu: str | None = None

    def check(self) -> None:
        check_name(self.name, what="--name")
        if len(self.name) > 40:  # instance dirs hold unix sockets: 107 bytes for <home>/instances/<name>-…
            raise ConfigError("--name", f"{self.name!r} is longer than 40 characters",
                              hint="worker sockets live under the instance directory; keep names short")
        for flag, value, low in (("--cold", self.cold, 0), ("--restores", self.restores, 1),
                                 ("--concurrency", self.concurrency, 1)):
            if value < low:
                raise ConfigError(flag, f"{value} is less than {low}")
        if not self.argv and self.cold:
            raise ConfigError("command", "cold starts need the worker's command",
                              hint="thaw bench --name N ... -- CMD [ARGS...], or --cold 0 with --artifact")
        if not self.argv and self.artifact is None:
            raise ConfigError("command", "no command and no --artifact", hint="thaw bench --name N -- CMD [ARGS...]")
        if self.drop_caches and not host.can_drop_caches():
            raise ConfigError("--drop-caches", f"{host.DROP_CACHES} is not writable", hint="run as root")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ConfigError("--time-limit", f"{self.time_limit:g} is not a positive number of seconds")


def run_bench(options: BenchOptions, ops: Operations, listener: Listener | None = None,
              sink: SampleSink | None = None) -> BenchResult:
    """Run the whole benchmark and return its result.

    Single runs that fail are counted, not raised. A run cut short — by the time limit, Ctrl-C
    or SIGTERM, or a snapshot that failed — still returns what was measured, with
    ``complete=False`` and the reason in ``stopped``.
    """
    options.check()
    started = datetime.now(timezone.utc)
    say = listener or _quiet
    caches: list[PageCache] = ["warm", "dropped"] if options.drop_caches else ["warm"]
    warmth = HostWarmth()
    if options.pretouch_bytes:
        say("warm host", 0, 1, f"touching {options.pretouch_bytes / 2**30:.1f} GiB")
        warmth = host.pretouch(options.pretouch_bytes)
        say("warm host", 1, 1, f"{warmth.pretouch_seconds:.1f} s")
    run = _Run(options, ops, say, sink or _quiet)
    try:
        answers = run.cold_starts(caches)
        run.snapshot()
        if run.manifest is not None:
            if not options.argv:
                options.argv = list(run.manifest.worker.argv)
            run.reference_kind, run.reference = _reference(options.answer, answers)
            run.measure_floors(caches)
            run.restores(caches)
    except KeyboardInterrupt:
        run.stopped = "interrupted"
    except ThawError as exc:  # the snapshot failed: nothing to restore
        run.stopped = f"{exc.reason}: {exc.message}"
    finally:
        run.clean_up()
    return run.result(started, caches, warmth)


def _reference(answer: Answer, cold_answers: list[str]) -> tuple[str, str | None]:
    """Restored answers are compared with the cold starts' answer when at least two cold starts gave
    the same one (a deterministic worker: one cold start cannot show that); otherwise with the first
    restored copy's — copies of one snapshot must agree whatever the worker."""
    if answer.kind != "http":
        return "none", None
    if len(cold_answers) >= 2 and len(set(cold_answers)) == 1:
        return "cold-start", cold_answers[0]
    return "first-restore", None


class _Run:
    """One benchmark's state: what it started, what it measured so far."""

    def __init__(self, options: BenchOptions, ops: Operations, say: Listener, sink: SampleSink) -> None:
        self.o = options
        self.ops = ops
        self.say = say
        self.sink = sink
        self.t0 = time.monotonic()
        self.gpus = host.gpu_uuids()  # each stop waits until these no longer list the stopped worker
        self.live: dict[str, Handle] = {}
        self.made_artifact: str | None = None
        self.artifact = options.artifact or f"{options.name}-bench-{time.strftime('%Y%m%d-%H%M%S')}"
        self.manifest: Manifest | None = None
        self.snapshot_record: Snapshot | None = None
        self.colds: list[ColdStart] = []
        self.samples: list[Restore] = []
        self.floors: list[Floor] = []
        self.reference_kind = "none"
        self.reference: str | None = None
        self.stopped: str | None = None
        self.count = 0  # restores so far: names them (index) across every set
        self.lock = threading.Lock()

    def expired(self) -> bool:
        if self.o.time_limit is not None and time.monotonic() - self.t0 > self.o.time_limit:
            self.stopped = self.stopped or f"time limit of {self.o.time_limit:g} s"
        return self.stopped is not None

    def result(self, started: datetime, caches: list[PageCache], warmth: HostWarmth) -> BenchResult:
        store, staging = self.ops.locations()
        machine = collect(store=store, staging=staging, criu=self.o.criu, host=warmth)
        colds = cold_summary(self.colds)
        plan = Plan(name=self.o.name, argv=self.o.argv, artifact=self.artifact,
                    artifact_given=self.o.artifact is not None, cold=self.o.cold, restores=self.o.restores,
                    concurrency=self.o.concurrency, page_cache=caches, pretouch_bytes=self.o.pretouch_bytes,
                    time_limit=self.o.time_limit, gpus=self.o.gpus, through=self.ops.through, answer=self.o.answer)
        image = self.snapshot_record.image_bytes if self.snapshot_record else 0
        return BenchResult(
            started_at=started, finished_at=datetime.now(timezone.utc), complete=self.stopped is None,
            stopped=self.stopped, plan=plan, machine=machine, reference=self.reference_kind,  # type: ignore[arg-type]
            cold_starts=self.colds, cold_summary=colds, snapshot=self.snapshot_record, restores=self.samples,
            summaries=summarize(self.samples, image_bytes=image, colds=colds, floors=self.floors,
                                concurrency=self.o.concurrency),
            floors=self.floors)

    # ---- cold starts ----------------------------------------------------------------------------

    def cold_starts(self, caches: list[PageCache]) -> list[str]:
        answers: list[str] = []
        total = self.o.cold * len(caches)
        for cache in caches:
            for i in range(self.o.cold):
                if self.expired():
                    return answers
                self.say("cold starts", len(self.colds), total, f"page cache {cache}, {i + 1} of {self.o.cold}")
                if cache == "dropped":
                    host.drop_caches()
                sample, answer = self._cold_start(len(self.colds), cache)
                self.colds.append(sample)
                self.sink("cold_start", sample)
                if answer is not None:
                    answers.append(answer)
        if total:
            self.say("cold starts", total, total, "")
        return answers

    def _cold_start(self, index: int, cache: PageCache) -> tuple[ColdStart, str | None]:
        t0 = time.perf_counter()
        worker = None
        marks: list[tuple[str, float]] = []
        try:
            worker = self._start(f"{self.o.name}-c{index}")
            marks.append(("launch", time.perf_counter()))
            self.ops.wait_parked(worker, self.o.ready_timeout)
            marks.append(("warm_up", time.perf_counter()))
            answer = None
            if self.o.answer.kind == "http":
                self.ops.release(worker)
                marks.append(("release", time.perf_counter()))
                answer = self._ask(worker).compared
                marks.append(("first_answer", time.perf_counter()))
        except ThawError as exc:
            return ColdStart(index=index, page_cache=cache, ok=False, failure=_failure(exc)), None
        finally:
            if worker is not None:
                self._stop(worker)
        return ColdStart(index=index, page_cache=cache, ok=True, seconds=marks[-1][1] - t0,
                         phases=_intervals("cold_start", t0, marks)), answer

    # ---- the snapshot ---------------------------------------------------------------------------

    def snapshot(self) -> None:
        if self.o.artifact is not None:
            self.manifest = self.ops.manifest(self.o.artifact)
            self.snapshot_record = _snapshot_record(self.manifest, None, None)
            return
        if self.expired():
            return
        self.say("snapshot", 0, 1, "cold start of the worker to snapshot")
        worker = self._start(f"{self.o.name}-s")
        self.ops.wait_parked(worker, self.o.ready_timeout)
        pids = self._pids(worker)  # the snapshot stops the original: its memory must come back before restores
        t0 = time.perf_counter()
        timings = self.ops.snapshot(worker, self.artifact, ready_timeout=self.o.ready_timeout,
                                    progress=lambda phase, frac, detail: self.say("snapshot", 0, 1, phase))
        wall = time.perf_counter() - t0
        self.made_artifact = self.artifact
        self.live.pop(worker.id, None)  # the snapshot stopped it
        self._settle(pids)
        self.say("snapshot", 1, 1, self.artifact)
        self.manifest = self.ops.manifest(self.artifact)
        tree = node("snapshot", wall, [from_timings("pipeline", timings)])
        self.snapshot_record = _snapshot_record(self.manifest, wall, tree)
        self.sink("snapshot", self.snapshot_record)

    # ---- the floor ------------------------------------------------------------------------------

    def measure_floors(self, caches: list[PageCache]) -> None:
        assert self.manifest is not None
        gpu_bytes = _gpu_bytes(self.manifest)
        h2d = None
        if self.o.measure_h2d and gpu_bytes:
            self.say("floor", 0, 1, "pinned host→device bandwidth")
            h2d = host.h2d_bandwidth()
        files = self.ops.artifact_files(self.artifact)
        for cache in caches:
            self.say("floor", 0, 1, f"read bandwidth, page cache {cache}")
            if cache == "dropped":
                host.drop_caches()
            read = host.read_bandwidth(files) if files else None
            self.floors.append(floor(cache, gpu_bytes=gpu_bytes, h2d_bandwidth=h2d, image_bytes=self.manifest.size,
                                     read_bandwidth=read))
        self.say("floor", 1, 1, "")

    # ---- restores -------------------------------------------------------------------------------

    def restores(self, caches: list[PageCache]) -> None:
        n, c = self.o.restores, self.o.concurrency
        for cache in caches:
            stage = f"restores, one at a time, page cache {cache}"
            for i in range(n):
                if self.expired():
                    return
                self.say(stage, i, n, "")
                if cache == "dropped":
                    host.drop_caches()
                self._group(cache, "sequential", wave=i, size=1)
            self.say(stage, n, n, "")
            if c < 2:
                continue
            stage = f"restores, {c} at once, page cache {cache}"
            for wave, done in enumerate(range(0, n, c)):
                if self.expired():
                    return
                self.say(stage, done, n, f"group {wave + 1}")
                if cache == "dropped":
                    host.drop_caches()
                self._group(cache, "concurrent", wave=wave, size=min(c, n - done))
            self.say(stage, n, n, "")

    def _group(self, cache: PageCache, mode: str, *, wave: int, size: int) -> None:
        """``size`` restores at once (one: alone), each to its first answer; then stop them all."""
        first = self._next(size)
        if size == 1:
            group = [self._restore(self.artifact, mode, cache, first, wave, 0)]
        else:
            with ThreadPoolExecutor(size) as pool:
                group = list(pool.map(lambda slot: self._restore(self.artifact, mode, cache, first + slot, wave, slot),
                                      range(size)))
        for sample, _ in group:
            self.samples.append(sample)
            self.sink("restore", sample)
        stopped = [worker for _, worker in group if worker is not None]
        pids = [p for worker in stopped for p in self._pids(worker)]
        for worker in stopped:
            self._stop(worker, settle=False)
        self._settle(pids)

    def _next(self, n: int) -> int:
        first, self.count = self.count, self.count + n
        return first

    def _restore(self, artifact: str, mode: str, cache: PageCache, index: int, wave: int,
                 slot: int) -> tuple[Restore, Handle | None]:
        """One restore to its first answer; the sample, and the restored worker to stop (None if none runs)."""
        gpu = _gpu_target(self.o.gpus[slot % len(self.o.gpus)]) if self.o.gpus else None
        sample = Restore(index=index, mode=mode, page_cache=cache, wave=wave,  # type: ignore[arg-type]
                         gpu=None if gpu is None else str(gpu), ok=False)
        t0 = time.perf_counter()
        try:
            restored = self.ops.restore(artifact, name=f"{self.o.name}-r{index}", gpu=gpu)
        except ThawError as exc:
            canary = "mismatch" if getattr(exc, "reason", "") == "canary_mismatch" else None
            return sample.model_copy(update={"failure": _failure(exc), "canary": canary}), None
        self.live[restored.worker.id] = restored.worker
        t_restored = time.perf_counter()
        update: dict[str, object] = {"canary": "passed" if restored.canary_checked else "unchecked"}
        children = [from_timings("restore", restored.timings)]
        if self.o.answer.kind == "http":
            try:
                answer = self._ask(restored.worker).compared
            except ThawError as exc:
                return sample.model_copy(update={**update, "failure": _failure(exc)}), restored.worker
            t_answer = time.perf_counter()
            children.append(node("first_answer", t_answer - t_restored))
            update["answer_matches"] = self._matches(answer)
        else:
            t_answer = t_restored
        return sample.model_copy(update={**update, "ok": True, "seconds": t_answer - t0,
                                         "phases": node("restore_to_first_answer", t_answer - t0, children)}), \
            restored.worker

    def _matches(self, answer: str) -> bool:
        with self.lock:  # copies restored at once answer on their own threads
            if self.reference is None:  # the first restored copy to answer sets it (see _reference)
                self.reference = answer
            return answer == self.reference

    # ---- helpers --------------------------------------------------------------------------------

    def _start(self, name: str) -> Handle:
        env = self.o.env if self.o.env is not None else dict(os.environ)
        worker = self.ops.launch(name, self.o.argv, env=env, cwd=self.o.cwd)
        self.live[worker.id] = worker
        return worker

    def _ask(self, worker: Handle):  # type: ignore[no-untyped-def]
        return ask(self.o.answer, control_dir=worker.control_dir, pid=worker.host_pid,
                   alive=lambda: self.ops.alive(worker))

    def _stop(self, worker: Handle, *, settle: bool = True) -> None:
        pids = self._pids(worker) if settle else []
        self.live.pop(worker.id, None)
        try:
            self.ops.stop(worker)
        except ThawError as exc:
            self.say("clean-up", 0, 0, f"could not stop {worker.id}: {exc.message}")
        self._settle(pids)

    def _pids(self, worker: Handle) -> list[int]:
        return host.gpu_pids(worker.host_pid) if self.gpus else []

    def _settle(self, pids: list[int]) -> None:
        """Wait until the GPUs gave back the memory of what was stopped: the next run finds them as the first did."""
        waited = host.wait_gpu_released(self.gpus, pids)
        if waited > 5:
            self.say("clean-up", 0, 0, f"the GPUs took {waited:.1f} s to free a stopped worker's memory")

    def clean_up(self) -> None:
        for worker in list(self.live.values()):
            self._stop(worker, settle=False)
        if self.made_artifact and not self.o.keep_artifact:
            try:
                self.ops.delete(self.made_artifact)
            except ThawError as exc:
                self.say("clean-up", 0, 0, f"could not delete {self.made_artifact}: {exc.message}")


def _intervals(name: str, t0: float, marks: list[tuple[str, float]]) -> Phase:
    """A tree from consecutive time marks: each phase lasts from the previous mark to its own."""
    children, last = [], t0
    for phase, at in marks:
        children.append(node(phase, at - last))
        last = at
    return node(name, last - t0, children)


def _snapshot_record(manifest: Manifest, seconds: float | None, tree: Phase | None) -> Snapshot:
    return Snapshot(artifact_id=manifest.artifact_id, digest=manifest.digest, image_bytes=manifest.size,
                    gpu_bytes=_gpu_bytes(manifest), released_bytes=sum(r.bytes for r in manifest.memory_released),
                    seconds=seconds, phases=tree)


def _gpu_bytes(manifest: Manifest) -> int | None:
    """Device memory the worker held at the lock (what a restore copies back); None if NVML could not tell."""
    used = [g.get("used_bytes") if isinstance(g, dict) else None for g in manifest.gpus]
    if not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in used):
        return None  # unknown, or not a byte count: a manifest is read as untrusted
    return sum(used)  # type: ignore[arg-type]


def _gpu_target(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _failure(exc: ThawError) -> Failure:
    return Failure(reason=getattr(exc, "reason", "error"), message=exc.message)
