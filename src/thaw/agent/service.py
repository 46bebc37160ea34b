"""The agent's work: accept operations, run them as jobs through the pipeline, recover after a crash.

Everything the HTTP layer (api.py) does goes through ``Agent``; it knows nothing of
HTTP. An operation is accepted (holds taken, job recorded, audit line written) in
the request, then runs on a worker thread::

    accept → job pending → running (progress per pipeline phase) → succeeded | failed

On start, ``recover()`` settles jobs that a previous agent process left unfinished:
each is marked failed ("agent restarted during <phase>"), a worker frozen for a
snapshot is told to ABORT (it runs its thaw hooks and stays parked), the artifact it
was staging is removed unless it was confirmed, a restored copy whose restore was cut
short is killed, and node-local staging is emptied.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from thaw import __version__, pipeline
from thaw.agent import pods
from thaw.agent.audit import AuditLog
from thaw.agent.holds import Holds
from thaw.agent.jobs import JobBook, new_job_id
from thaw.agent.journaled import JournaledStore
from thaw.agent.metrics import Metrics
from thaw.agent.models import (
    AgentStatus,
    ArtifactSummary,
    CanaryReport,
    Job,
    JobError,
    JobKind,
    LaunchRequest,
    RestoreRequest,
    RestoreResult,
    SnapshotRequest,
    SnapshotResult,
    VerifyResult,
    Worker,
)
from thaw.config import Settings
from thaw.errors import BusyError, CanaryMismatch, ConfigError, ThawError, WorkerNotFound
from thaw.pipeline import control
from thaw.pipeline import gpu as pipeline_gpu
from thaw.pipeline.instances import Instance, reap
from thaw.sandbox.pod import Anchor
from thaw.store import Manifest, Staged, Store, check_name, owner, store_for
from thaw.worker.protocol import Action

#: phases after which a snapshot's artifact is published and confirmed by the pipeline
PUBLISHED_PHASES = ("resume_original", "stop_original")
#: how long recovery waits for a worker to answer ABORT / RELEASE
RECOVERY_REPLY_S = 15.0
#: how long recovery waits for a CRIU process started by the previous agent to finish
CRIU_GRACE_S = 60.0
#: the environment a launched worker gets besides what the request names (never the agent's own)
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class NotFound(ThawError):
    """No such worker or job (404)."""

    reason = "not_found"


@dataclass
class AgentConfig:
    settings: Settings
    #: where the agent keeps jobs.db and audit.log; default <home>/agent
    state_dir: Path | None = None
    audit_log: Path | None = None
    max_jobs: int = 8
    reap_interval_s: float = 2.0

    @property
    def state(self) -> Path:
        return self.state_dir or self.settings.home / "agent"


@dataclass
class _Running:
    job: Job
    store: JournaledStore
    phases: list[str] = field(default_factory=list)


class Agent:
    def __init__(self, config: AgentConfig, *, store: Store | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.staging = self.settings.staging_dir
        self.staging.mkdir(parents=True, exist_ok=True)
        self.store = store or store_for(self.settings)
        # the job book and the audit log: root's alone; no worker (nor any other user) may read or write them
        config.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(config.state, 0o700)
        self.book = JobBook(config.state / "jobs.db")
        self.audit = AuditLog(config.audit_log or config.state / "audit.log")
        self.metrics = Metrics()
        self.holds = Holds()
        self.started_at = datetime.now(UTC)
        self._pool = ThreadPoolExecutor(max_workers=config.max_jobs, thread_name_prefix="thaw-job")
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._completed = self.book.verified()  # restored instances whose restore job succeeded
        self._completed_lock = threading.Lock()
        self._keys_lock = threading.Lock()  # one start per idempotency key

    # ---- life cycle ---------------------------------------------------------------------

    def start(self) -> list[Job]:
        """Recover from a previous run, then start reaping exited workers. Returns the jobs recovered."""
        recovered = self.recover()
        self._reaper = threading.Thread(target=self._reap_loop, name="thaw-reaper", daemon=True)
        self._reaper.start()
        return recovered

    def close(self, wait: bool = True) -> None:
        """Refuse new jobs and (by default) let running ones finish."""
        self._stop.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self.book.close()

    def status(self) -> AgentStatus:
        return AgentStatus(node=self.settings.node, version=__version__, store=self.store.url,
                           staging=str(self.staging), pid=os.getpid(), started_at=self.started_at,
                           jobs_running=len(self.book.list(unfinished=True)),
                           workers_alive=sum(1 for i in self._instances() if i.alive()), gpus=_gpus())

    # ---- workers --------------------------------------------------------------------------

    def workers(self, *, include_gone: bool = False) -> list[Worker]:
        return [self.view(i) for i in self._instances() if include_gone or i.alive()]

    def worker(self, ref: str) -> Worker:
        return self.view(self._find(ref, alive=False))

    def launch(self, req: LaunchRequest, caller: dict[str, Any]) -> Worker:
        cwd = Path(req.cwd)
        if not cwd.is_dir():
            raise ConfigError("cwd", f"{req.cwd} is not a directory on node {self.settings.node}")
        # held by name while the check and the launch run: two launches of one name cannot both pass
        with self.holds.held(f"launch-{req.name}", "launch", worker=f"name:{req.name}", worker_label=req.name):
            if any(i.name == req.name and i.alive() for i in self._instances()):
                raise BusyError(f"a worker named {req.name!r} is already running on {self.settings.node}",
                                hint="pick another name, or stop it first")
            try:
                inst = pipeline.launch(self.settings, req.argv, name=req.name, env={**BASE_ENV, **req.env},
                                       cwd=cwd, park=req.park_at_listen)
            except ThawError as exc:
                self.audit.record("launch", "failed", caller=caller, worker=req.name, reason=exc.reason,
                                  message=str(exc))
                raise
        self.audit.record("launch", "succeeded", caller=caller, worker=inst.id)
        return self.view(inst)

    def stop_worker(self, ref: str, caller: dict[str, Any]) -> Worker:
        inst = self._find(ref, alive=False)
        with self.holds.held(f"stop-{inst.id}", "stop", worker=inst.id, worker_label=inst.name):
            pipeline.stop(self.settings, inst)
        self.audit.record("stop", "succeeded", caller=caller, worker=inst.id, artifact=inst.artifact)
        return self.view(inst)

    def release_worker(self, ref: str, caller: dict[str, Any], timeout: float = 10.0) -> Worker:
        inst = self._find(ref)
        with self.holds.held(f"release-{inst.id}", "release", worker=inst.id, worker_label=inst.name):
            pipeline.release(self.settings, inst, timeout=timeout)
        self.audit.record("release", "succeeded", caller=caller, worker=inst.id)
        return self.view(inst)

    def view(self, inst: Instance) -> Worker:
        alive = inst.alive()
        with self._completed_lock:
            verified = inst.id in self._completed
        return Worker(
            id=inst.id, name=inst.name, state=inst.state, origin=inst.origin, artifact=inst.artifact,
            node=inst.node, host_pid=inst.host_pid, alive=alive,
            parked=inst.parked(),
            ready=alive and inst.state == "running" and (inst.origin != "restored" or verified),
            busy=self.holds.worker_holder(inst.id), control_dir=str(inst.dir), created_at=inst.created_at,
        )

    # ---- artifacts --------------------------------------------------------------------------

    def artifacts(self) -> list[ArtifactSummary]:
        return [_summary(m) for m in self.store.list()]

    def manifest(self, name: str) -> Manifest:
        return self.store.manifest(check_name(name))

    def delete_artifact(self, name: str, caller: dict[str, Any]) -> None:
        check_name(name)
        manifest = self.store.manifest(name)
        with self.holds.held(f"delete-{name}", "delete", artifact=name, exclusive=True):
            self.store.delete(name)
        self.audit.record("delete", "succeeded", caller=caller, artifact=name, artifact_id=manifest.artifact_id,
                          digest=manifest.digest)

    # ---- jobs -----------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        job = self.book.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} on node {self.settings.node}")
        return job

    def jobs(self, limit: int = 100) -> list[Job]:
        return self.book.list(limit=limit)

    def submit_snapshot(self, req: SnapshotRequest, caller: dict[str, Any]) -> Job:
        with self._keyed(req.idempotency_key, JobKind.SNAPSHOT, req.artifact) as replay:
            if replay is not None:
                return replay
            inst = pods.adopt(self.settings, req.pod) if req.pod else self._find(req.worker)
            job = self._accept(JobKind.SNAPSHOT, req.model_dump(), caller, worker=inst.id, artifact=req.artifact,
                               holds={"worker": inst.id, "worker_label": inst.name, "artifact": req.artifact,
                                      "exclusive": True},
                               precheck=lambda: self._refuse_taken(req.artifact), key=req.idempotency_key)
            self.book.journal(job.id, worker_id=inst.id, worker_pid=inst.host_pid)
            return self._launch_job(job, lambda run: self._run_snapshot(run, inst, req))

    def submit_restore(self, req: RestoreRequest, caller: dict[str, Any]) -> Job:
        with self._keyed(req.idempotency_key, JobKind.RESTORE, req.artifact) as replay:
            if replay is not None:
                return replay
            if req.name is not None and any(i.name == req.name and i.alive() for i in self._instances()):
                raise BusyError(f"a worker named {req.name!r} is already running on {self.settings.node}",
                                hint="pick another name for the restored worker")
            # 404 now rather than a failed job later; a wrong digest or signature too (fetch checks it again)
            self.store.trust.check(self.store.manifest(req.artifact), expected_digest=req.digest)
            anchor = pods.anchor_of(req.pod) if req.pod else None  # 404 now if the pod is not (yet) here
            job = self._accept(JobKind.RESTORE, req.model_dump(), caller, worker=req.name, artifact=req.artifact,
                               holds={"artifact": req.artifact}, key=req.idempotency_key)
            return self._launch_job(job, lambda run: self._run_restore(run, req, anchor))

    @contextmanager
    def _keyed(self, key: str | None, kind: JobKind, artifact: str) -> Iterator[Job | None]:
        """Held while a start is accepted: the job an earlier start with this idempotency key began, if any."""
        if key is None:
            yield None
            return
        with self._keys_lock:
            job = self.book.by_key(key)
            if job is not None and (job.kind, job.artifact) != (kind, artifact):
                raise BusyError(f"idempotency key {key!r} started a {job.kind.value} of {job.artifact!r} (job "
                                f"{job.id}), not a {kind.value} of {artifact!r}", hint="use a new key for a new request")
            yield job

    def submit_verify(self, name: str, caller: dict[str, Any]) -> Job:
        check_name(name)
        self.store.manifest(name)
        job = self._accept(JobKind.VERIFY, {"artifact": name}, caller, worker=None, artifact=name,
                           holds={"artifact": name})
        return self._launch_job(job, lambda run: self._run_verify(run, name))

    def _accept(self, kind: JobKind, request: dict[str, Any], caller: dict[str, Any], *, worker: str | None,
                artifact: str | None, holds: dict[str, Any], precheck: Callable[[], None] | None = None,
                key: str | None = None) -> Job:
        if self._stop.is_set():
            raise BusyError(f"agent on {self.settings.node} is shutting down")
        job_id = new_job_id()
        self.holds.take(job_id, kind.value, **holds)  # first: a concurrent request for the same worker gets 409
        try:
            if precheck:
                precheck()
            job = self.book.create(kind, worker=worker, artifact=artifact, request=request, caller=caller,
                                   node=self.settings.node, job_id=job_id, key=key)
        except BaseException:
            self.holds.drop(job_id)
            raise
        self.audit.record(kind.value, "accepted", caller=caller, worker=worker, artifact=artifact, job=job.id)
        return job

    def _refuse_taken(self, artifact: str) -> None:
        if self.store.exists(artifact):
            raise BusyError(f"an artifact named {artifact!r} already exists in {self.store.url}",
                            hint="pick another name, or delete the old one first")

    def _launch_job(self, job: Job, body: Callable[[_Running], dict[str, Any]]) -> Job:
        def on_stage(staged: Staged) -> None:
            self.book.journal(job.id, staged={"name": staged.name, "artifact_id": staged.artifact_id,
                                              "dir": str(staged.dir)})

        run = _Running(job=job, store=JournaledStore(self.store, on_stage))
        try:
            self._pool.submit(self._execute, run, body)
        except RuntimeError:  # the pool was shut down between accepting and queueing: the agent is stopping
            self.holds.drop(job.id)
            self.book.fail(job.id, JobError(reason="busy", message=f"agent on {self.settings.node} is shutting down"))
            raise BusyError(f"agent on {self.settings.node} is shutting down") from None
        return job

    def _execute(self, run: _Running, body: Callable[[_Running], dict[str, Any]]) -> None:
        job = run.job
        op = job.kind.value
        self.book.start(job.id)
        self.metrics.jobs_running.labels(op).inc()
        t0 = time.perf_counter()
        result: dict[str, Any] | None = None
        error: JobError | None = None
        try:
            result = body(run)
        except ThawError as exc:
            error = JobError(reason=exc.reason, message=exc.message, hint=exc.hint, detail=_error_detail(exc))
        except Exception as exc:  # noqa: BLE001 - a bug, not an expected failure: still a clear, recorded job error
            error = JobError(reason="internal", message=f"{type(exc).__name__}: {exc}")
        finally:
            # free the worker and artifact before the job reads as finished: a client that saw it
            # finish may start the next operation on them at once
            self.holds.drop(job.id)
            self.metrics.jobs_running.labels(op).dec()
        seconds = time.perf_counter() - t0
        if error is not None or result is None:
            self._finish_failed(run, error or JobError(reason="internal", message="no result"), seconds)
            return
        self.metrics.operation_seconds.labels(op, "succeeded").observe(seconds)
        self.audit.record(op, "succeeded", caller=job.caller, worker=result.get("worker_id", job.worker),
                          artifact=job.artifact, artifact_id=result.get("artifact_id"),
                          digest=result.get("digest"), job=job.id)
        self.book.succeed(job.id, result)

    def _finish_failed(self, run: _Running, error: JobError, seconds: float) -> None:
        job = run.job
        self.metrics.failures.labels(job.kind.value, error.reason).inc()
        self.metrics.operation_seconds.labels(job.kind.value, "failed").observe(seconds)
        self.audit.record(job.kind.value, "failed", caller=job.caller, worker=job.worker, artifact=job.artifact,
                          job=job.id, reason=error.reason, message=error.message)
        self.book.fail(job.id, error)

    def _progress(self, run: _Running) -> Callable[[str, float | None, str], None]:
        def progress(phase: str, fraction: float | None, detail: str) -> None:
            if phase not in run.phases:
                run.phases.append(phase)
                self.book.journal(run.job.id, phases=run.phases)
            self.book.progress(run.job.id, phase, fraction, detail)

        return progress

    # ---- the operations -----------------------------------------------------------------------

    def _run_snapshot(self, run: _Running, inst: Instance, req: SnapshotRequest) -> dict[str, Any]:
        res = pipeline.snapshot(self.settings, inst.id, req.artifact, store=run.store,
                                leave_running=req.leave_running, ready_timeout=req.ready_timeout,
                                canary_http=req.canary_http, progress=self._progress(run))
        m = res.manifest
        write_s = res.timings.get("dump", 0.0) + res.timings.get("publish", 0.0)
        gbps = run.store.stage_stats.get("write_gbps") or (m.size / write_s / 1e9 if write_s > 0 else None)
        self.metrics.observe_timings("snapshot", res.timings)
        self.metrics.artifact_bytes.labels("snapshot").observe(m.size)
        self.metrics.observe_transfer("write", m.size, gbps)
        return SnapshotResult(artifact=m.name, artifact_id=m.artifact_id, digest=m.digest, bytes=m.size,
                              timings=res.timings, write_gbps=gbps,
                              original="running" if req.leave_running else "stopped").model_dump(mode="json") | {
            "worker_id": inst.id}

    def _run_restore(self, run: _Running, req: RestoreRequest, anchor: Anchor | None = None) -> dict[str, Any]:
        try:
            gpu = req.gpu if req.gpu is not None or anchor is None else pods.gpu_of(anchor)  # a pod's: its own
            res = pipeline.restore(self.settings, req.artifact, store=run.store, gpu_target=gpu, name=req.name,
                                   verify_canary=req.verify_canary, expected_digest=req.digest,
                                   progress=self._progress(run), into=anchor)
        except CanaryMismatch:
            self.metrics.canary.labels("mismatch").inc()
            raise
        inst, m = res.instance, res.manifest
        checked = res.canary_checked
        self.metrics.canary.labels("match" if checked else "skipped").inc()
        with self._completed_lock:
            self._completed.add(inst.id)
        self.book.mark_verified(inst.id, run.job.id)
        fetch_s = res.timings.get("fetch", 0.0)
        gbps = run.store.fetch_stats.get("read_gbps") or (m.size / fetch_s / 1e9 if fetch_s > 0 else None)
        self.metrics.observe_timings("restore", res.timings)
        self.metrics.artifact_bytes.labels("restore").observe(m.size)
        self.metrics.observe_transfer("read", m.size, gbps)
        canary = CanaryReport(checked=checked, match=True if checked else None, expected=res.canary_expected,
                              got=res.canary_got, http_requests=len(res.http_canary_got or []))
        return RestoreResult(worker=self.view(inst), artifact=m.name, artifact_id=m.artifact_id, digest=m.digest,
                             bytes=m.size, timings=res.timings, read_gbps=gbps,
                             canary=canary).model_dump(mode="json") | {"worker_id": inst.id}

    def _run_verify(self, run: _Running, name: str) -> dict[str, Any]:
        self._progress(run)("verify", None, f"reading every chunk of {name}")
        t0 = time.perf_counter()
        m = self.store.verify(name)
        dt = time.perf_counter() - t0
        gbps = m.size / dt / 1e9 if dt > 0 else None
        self.metrics.observe_timings("verify", {"verify": dt})
        self.metrics.artifact_bytes.labels("verify").observe(m.size)
        self.metrics.observe_transfer("read", m.size, gbps)
        return VerifyResult(artifact=name, artifact_id=m.artifact_id, digest=m.digest, bytes=m.size, seconds=dt,
                            read_gbps=gbps).model_dump(mode="json")

    # ---- recovery -------------------------------------------------------------------------

    def recover(self) -> list[Job]:
        """Settle the jobs a previous agent process left unfinished (see the module docstring)."""
        recovered = []
        for job in self.book.list(unfinished=True, limit=100_000):
            phase = job.progress.phase if job.progress else ("queue" if job.state.value == "pending" else "start")
            journal = self.book.journal_of(job.id)
            notes: list[str] = []
            try:
                if job.kind is JobKind.SNAPSHOT:
                    notes = self._recover_snapshot(job, journal, phase)
                elif job.kind is JobKind.RESTORE:
                    notes = self._recover_restore(job)
            except Exception as exc:  # noqa: BLE001 - recovery must go on for the other jobs
                notes.append(f"recovery step failed: {type(exc).__name__}: {exc}")
            message = f"agent restarted during {phase}" + (f"; {'; '.join(notes)}" if notes else "")
            error = JobError(reason="agent_restarted", message=message, detail={"phase": phase, "recovery": notes})
            self.book.fail(job.id, error)
            self.metrics.failures.labels(job.kind.value, "agent_restarted").inc()
            self.audit.record(job.kind.value, "failed", caller=job.caller, worker=job.worker, artifact=job.artifact,
                              job=job.id, reason="agent_restarted", message=message)
            recovered.append(self.book.get(job.id))
        self._empty_staging()
        try:  # the store's staging left by dead writers of this node (a killed `thaw snapshot --local` too)
            swept = self.store.sweep()
            if swept:
                self.audit.record("sweep", "succeeded", caller={"via": "agent start"},
                                  message=f"{swept} staging entries of dead writers removed")
        except (ThawError, OSError):
            pass  # `thaw gc` reports what it cannot remove
        return [j for j in recovered if j is not None]

    def _recover_snapshot(self, job: Job, journal: dict[str, Any], phase: str) -> list[str]:
        notes = []
        staged = journal.get("staged")
        published = phase in PUBLISHED_PHASES
        pid = journal.get("worker_pid", 0)
        # a CRIU dump outlives the agent that started it: let it finish writing before anything is removed
        if pid and not _wait_untraced(pid, CRIU_GRACE_S):
            notes.append(f"CRIU still held the worker after {CRIU_GRACE_S:.0f}s")
        if staged and not published:
            # the publish may have landed in the instant before the crash, unconfirmed: take it back
            try:
                if self.store.manifest(staged["name"]).artifact_id == staged["artifact_id"]:
                    self.store.delete(staged["name"])
                    notes.append(f"unconfirmed artifact {staged['name']!r} removed")
            except ThawError:
                pass
            self.store.abandon(staged["name"], staged["artifact_id"], Path(staged["dir"]))
            notes.append("staged files removed")
        elif published:
            notes.append(f"artifact {job.artifact!r} was published and is kept")
        inst = self._instance_by_id(journal.get("worker_id"))
        if inst is None or not inst.alive():
            notes.append("the worker is gone")
            return notes
        if phase == "stop_original":
            inst.kill()
            inst.state = "snapshotted"
            inst.save()
            notes.append("the original worker was stopped, as requested")
            return notes
        if "gpu_checkpoint" in journal.get("phases", []):
            # its device state may still be checkpointed into host memory: bring it back first
            try:
                pipeline_gpu.rollback(inst.host_pid)
                notes.append("GPU state rolled back")
            except (ThawError, ImportError, OSError) as exc:
                notes.append(f"GPU rollback: {exc}")
        if phase == "resume_original":
            self._tell(inst, Action.RELEASE, notes, "released the original worker, as requested")
        else:
            self._tell(inst, Action.ABORT, notes, "the worker was told to ABORT and is parked again")
        return notes

    def _tell(self, inst: Instance, action: Action, notes: list[str], done: str) -> None:
        try:
            control.send(inst, action, timeout=RECOVERY_REPLY_S)
            notes.append(done)
        except ThawError as exc:
            notes.append(f"{action.value} not acknowledged: {exc.message}")

    def _recover_restore(self, job: Job) -> list[str]:
        notes = []
        since = job.created_at - timedelta(seconds=1)
        with self._completed_lock:
            completed = set(self._completed)
        for inst in self._instances():
            if (inst.origin == "restored" and inst.artifact == job.artifact and inst.id not in completed
                    and inst.created_at >= since and inst.state not in ("stopped", "failed")):
                # a CRIU restore outlives the agent that started it: wait for it, then kill what it made.
                # Its processes are found by their open files (CRIU's log, the copy's stdout in the
                # instance directory), since the instance record may not have the pid yet.
                deadline = time.monotonic() + CRIU_GRACE_S
                while _holders(inst.dir / "ops") and time.monotonic() < deadline:
                    time.sleep(0.05)
                killed = [pid for pid in _holders(inst.dir) if _kill(pid)]
                was_alive = inst.alive()
                inst.kill()
                inst.state = "failed"
                inst.save()
                if was_alive or killed:
                    notes.append(f"the half-restored worker {inst.id} was killed")
        return notes

    def _empty_staging(self) -> None:
        # node-local: nothing in it outlives the process that staged it, but a `thaw restore --local` may be
        # fetching into it right now: only what a dead owner (or no owner of thaw's naming) left goes
        for entry in self.staging.iterdir():
            if entry.name.startswith(".") or owner.state(entry) in ("alive", "held"):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    # ---- helpers ---------------------------------------------------------------------------

    def _instances(self) -> list[Instance]:
        return pipeline.list_instances(self.settings)

    def _instance_by_id(self, instance_id: str | None) -> Instance | None:
        return next((i for i in self._instances() if i.id == instance_id), None) if instance_id else None

    def _find(self, ref: str, *, alive: bool = True) -> Instance:
        """The instance with id ``ref``, else the newest live one named ``ref`` (any, with alive=False)."""
        check_name(ref, what="worker name")
        try:
            return pipeline.find(self.settings, ref, alive=alive)
        except WorkerNotFound as exc:
            raise NotFound(exc.message, hint="GET /v1/workers lists them") from exc

    def _reap_loop(self) -> None:
        # restored workers are re-parented to this process (child subreaper): collect those that exit
        while not self._stop.wait(self.config.reap_interval_s):
            try:
                everyone = self._instances()
                pods.untie(everyone)
                for inst in everyone:
                    for pid in (inst.host_pid, inst.holder_pid):
                        if pid > 0:
                            try:
                                os.waitpid(pid, os.WNOHANG)
                            except ChildProcessError:
                                pass
            except Exception:  # noqa: BLE001,S112 - reaping is best effort: try again next round
                continue


def _wait_untraced(pid: int, timeout: float) -> bool:
    """Wait until no tracer (CRIU) holds ``pid``; True if it is free (or gone)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/status") as f:
                tracer = next((int(line.split()[1]) for line in f if line.startswith("TracerPid:")), 0)
        except (FileNotFoundError, ProcessLookupError):
            return True
        if tracer == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _holders(directory: Path) -> list[int]:
    """Processes with a file under ``directory`` open."""
    prefix = str(directory).rstrip("/") + "/"
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}").startswith(prefix):
                    found.append(int(entry))
                    break
        except OSError:
            continue  # gone, or not ours to look at
    return found


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    reap(pid, timeout=5)
    return True


def _gpus() -> list[dict[str, Any]]:
    """This node's GPUs for placement decisions (the operator); [] without a driver or on any error."""
    try:
        from thaw.cuda import devices

        return [g.to_dict() for g in devices()]
    except Exception:  # noqa: BLE001 - a broken driver must not break /v1/status
        return []


def _summary(m: Manifest) -> ArtifactSummary:
    return ArtifactSummary(name=m.name, artifact_id=m.artifact_id, digest=m.digest, created_at=m.created_at,
                           bytes=m.size, worker=m.worker.name, source_host=m.source.host, gpus=len(m.gpus),
                           has_canary=m.worker.canary is not None)


def _error_detail(exc: ThawError) -> dict[str, Any]:
    if isinstance(exc, CanaryMismatch):
        return {"expected": exc.expected, "got": exc.got, "differences": differences(exc.expected, exc.got),
                "restored_worker": "killed", "artifact": "kept"}
    detail: dict[str, Any] = {}
    for attr in ("field", "path", "operation", "log_tail"):
        value = getattr(exc, attr, None)
        if value:
            detail[attr] = str(value)
    return detail


def differences(expected: Any, got: Any, where: str = "$", limit: int = 20) -> list[str]:
    """Where two canary outputs differ, as JSON-path lines: ``$.tokens[3]: expected 17, got 18``."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k not in b:
                    out.append(f"{path}.{k}: missing in the restored output")
                elif k not in a:
                    out.append(f"{path}.{k}: not in the recorded output")
                else:
                    walk(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                out.append(f"{path}: expected {len(a)} items, got {len(b)}")
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif a != b or type(a) is not type(b):
            out.append(f"{path}: expected {_short(a)}, got {_short(b)}")

    walk(expected, got, where)
    return out


def _short(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."
