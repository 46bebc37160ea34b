"""The agent's work: accept operations, run them through thaw.ops as jobs, hold workers, audit; settle a restart.

Everything the HTTP layer (api.py) does goes through ``Agent``; it knows nothing of
HTTP. Quick operations (launch, stop, release, delete) run in the request; long ones
(snapshot, restore, verify) are accepted as jobs (jobs.py: holds taken, job recorded,
audit line written) and run on a worker thread::

    accept → job pending → running (progress per pipeline phase) → succeeded | failed

The operations themselves are thaw.ops.LocalOperations — the very code ``thaw --local``
runs — so the agent's results are the CLI's. On start, ``recover()`` has the pipeline
settle what a previous agent process left half done (pipeline/recovery.py), marks each
job it cut short failed ("agent restarted during <phase>", with what recovery did), and
empties node-local staging.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from thaw import __version__, pipeline
from thaw.agent import pods
from thaw.agent.audit import AuditLog
from thaw.agent.holds import Holds
from thaw.agent.jobs import JobBook
from thaw.agent.metrics import Metrics
from thaw.agent.runner import JobRunner
from thaw.api.models import (
    AgentStatus,
    ArtifactSummary,
    Deleted,
    Inspection,
    Job,
    JobError,
    JobKind,
    LaunchRequest,
    Recovery,
    RestoreRequest,
    SnapshotRequest,
    Swept,
    SweepRequest,
    Worker,
)
from thaw.config import Settings
from thaw.cuda import devices
from thaw.errors import BusyError, ConfigError, CudaError, JobNotFound, ThawError
from thaw.model import Manifest, check_name
from thaw.model.manifest import check_digest
from thaw.ops import LocalOperations, views
from thaw.pipeline import Instance, Recovered
from thaw.store import Store, store_for

log = logging.getLogger("thaw.agent")

#: the environment a launched worker gets besides what the request names (never the agent's own)
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass
class AgentConfig:
    settings: Settings
    #: where the agent keeps jobs.db and audit.log; default <home>/agent
    state_dir: Path | None = None
    audit_log: Path | None = None
    reap_interval_s: float = 2.0

    @property
    def state(self) -> Path:
        return self.state_dir or self.settings.agent_state_dir


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
        self.ops = LocalOperations(self.settings, self.store)
        self.book = JobBook(config.state / "jobs.db")
        self.audit = AuditLog(config.audit_log or config.state / "audit.log")
        self.metrics = Metrics()
        self.holds = Holds()
        self.jobs = JobRunner(self.ops, self.book, self.holds, self.audit, self.metrics, node=self.settings.node,
                              max_jobs=self.settings.agent.max_jobs)
        self.started_at = datetime.now(UTC)
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
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
        self.jobs.close(wait=wait)
        self.book.close()

    def status(self) -> AgentStatus:
        gpus, gpu_error = [], None
        try:
            gpus = devices()
        except CudaError as exc:  # a broken driver is reported as such, never as "no GPUs"
            gpu_error = exc.message
        return AgentStatus(node=self.settings.node, version=__version__, store=self.store.url,
                           staging=str(self.staging), pid=os.getpid(), started_at=self.started_at,
                           jobs_running=len(self.book.list(unfinished=True)),
                           workers_alive=sum(1 for i in self._instances() if i.alive()), gpus=gpus,
                           gpu_error=gpu_error)

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
                launched = self.ops.launch(req.name, req.argv, env={**BASE_ENV, **req.env}, cwd=cwd,
                                           park=req.park_at_listen)
            except ThawError as exc:
                self.audit.record("launch", "failed", caller=caller, worker=req.name, reason=exc.reason,
                                  message=str(exc))
                raise
        self.audit.record("launch", "succeeded", caller=caller, worker=launched.id)
        return launched

    def stop_worker(self, ref: str, caller: dict[str, Any]) -> Worker:
        inst = self._find(ref, alive=False)
        with self.holds.held(f"stop-{inst.id}", "stop", worker=inst.id, worker_label=inst.name):
            stopped = self.ops.stop(inst.id)
        self.audit.record("stop", "succeeded", caller=caller, worker=inst.id, artifact=inst.artifact)
        return stopped

    def release_worker(self, ref: str, caller: dict[str, Any]) -> Worker:
        inst = self._find(ref)
        with self.holds.held(f"release-{inst.id}", "release", worker=inst.id, worker_label=inst.name):
            released = self.ops.release(inst.id)
        self.audit.record("release", "succeeded", caller=caller, worker=inst.id)
        return released

    def sweep(self, req: SweepRequest, caller: dict[str, Any]) -> Swept:
        """``thaw gc`` through the agent: remove what crashed operations left on this node and in its store."""
        swept = self.ops.sweep(req.older_than_s)
        self.audit.record("sweep", "succeeded", caller=caller,
                          message=f"{len(swept.staging)} node staging entries, {swept.store_entries} store entries, "
                                  f"{len(swept.instances)} instance directories removed")
        return swept

    def recover_workers(self, caller: dict[str, Any]) -> list[Recovery]:
        """``thaw gc`` through the agent: settle operations whose process died (this agent's own jobs hold theirs)."""
        recovered = self.ops.recover()
        for r in recovered:
            self.audit.record("recover", "succeeded", caller=caller, worker=r.worker.id, artifact=r.worker.artifact,
                              message="; ".join(r.notes))
        return recovered

    def view(self, inst: Instance) -> Worker:
        return views.worker(inst, busy=self.holds.worker_holder(inst.id))

    # ---- artifacts --------------------------------------------------------------------------

    def artifacts(self) -> list[ArtifactSummary]:
        return self.ops.artifacts()

    def manifest(self, name: str) -> Manifest:
        return self.store.manifest(check_name(name))

    def inspect(self, name: str) -> Inspection:
        return self.ops.inspect(name)

    def delete_artifact(self, name: str, caller: dict[str, Any]) -> Deleted:
        check_name(name)
        with self.holds.held(f"delete-{name}", "delete", artifact=name, exclusive=True):
            deleted = self.ops.delete(name)
        self.audit.record("delete", "succeeded", caller=caller, artifact=name, artifact_id=deleted.artifact_id,
                          digest=deleted.digest)
        return deleted

    # ---- jobs (jobs.py runs them) ------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        job = self.book.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} on node {self.settings.node}")
        return job

    def job_list(self, limit: int = 100) -> list[Job]:
        return self.book.list(limit=limit)

    def submit_snapshot(self, req: SnapshotRequest, caller: dict[str, Any]) -> Job:
        with self._keyed(req.idempotency_key, JobKind.SNAPSHOT, req.artifact) as replay:
            if replay is not None:
                return replay
            inst = pods.adopt(self.settings, req.pod) if req.pod else self._find(req.worker)
            return self.jobs.snapshot(inst, req, caller)

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
            return self.jobs.restore(req, caller, into=anchor)

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
                                f"{job.id}), not a {kind.value} of {artifact!r}",
                                hint="use a new key for a new request")
            yield job

    def submit_verify(self, name: str, caller: dict[str, Any], digest: str | None = None) -> Job:
        self.store.manifest(check_name(name))
        return self.jobs.verify(name, caller, digest=check_digest(digest) if digest is not None else None)

    # ---- after a restart --------------------------------------------------------------------

    def recover(self) -> list[Job]:
        """Have the pipeline settle what a previous agent left half done; fail its unfinished jobs saying so."""
        settled = pipeline.recover(self.settings, self.store)
        failed = []
        for job in self.book.list(unfinished=True, limit=100_000):
            phase = job.progress.phase if job.progress else ("queue" if job.state.value == "pending" else "start")
            worker_id = self.book.journal_of(job.id).get("worker_id")
            notes = [note for r in settled if _settled_for(job, worker_id, r) for note in r.notes]
            message = f"agent restarted during {phase}" + (f"; {'; '.join(notes)}" if notes else "")
            self.book.fail(job.id, JobError(reason="agent_restarted", message=message,
                                            detail={"phase": phase, "recovery": notes}))
            self.metrics.failures.labels(job.kind.value, "agent_restarted").inc()
            self.audit.record(job.kind.value, "failed", caller=job.caller, worker=job.worker, artifact=job.artifact,
                              job=job.id, reason="agent_restarted", message=message)
            failed.append(self.book.get(job.id))
        # node-local staging: a `thaw restore --local` may be fetching into it right now; only what no live
        # process owns goes (pipeline.clear_staging)
        pipeline.clear_staging(self.settings)
        try:  # the store's staging left by dead writers of this node (a killed `thaw snapshot --local` too)
            swept = self.store.sweep()
            if swept:
                self.audit.record("sweep", "succeeded", caller={"via": "agent start"},
                                  message=f"{swept} staging entries of dead writers removed")
        except (ThawError, OSError) as exc:  # `thaw gc` reports what it cannot remove
            log.warning("sweeping the store's staging at start: %s", exc)
        return [j for j in failed if j is not None]

    # ---- helpers ---------------------------------------------------------------------------

    def _instances(self) -> list[Instance]:
        return pipeline.list_instances(self.settings)

    def _find(self, ref: str, *, alive: bool = True) -> Instance:
        """The instance with id ``ref``, else the newest live one named ``ref`` (any, with alive=False)."""
        check_name(ref, what="worker name")
        return pipeline.find(self.settings, ref, alive=alive)

    def _reap_loop(self) -> None:
        # restored workers are re-parented to this process (child subreaper): collect those that exit
        while not self._stop.wait(self.config.reap_interval_s):
            try:
                everyone = self._instances()
                pods.untie(everyone)
            except (OSError, ThawError) as exc:  # an unreadable instance record: reap what can be, retry next round
                log.warning("reaper: %s", exc)
                continue
            for inst in everyone:
                for pid in (inst.host_pid, inst.holder_pid):
                    if pid > 0:
                        try:
                            os.waitpid(pid, os.WNOHANG)
                        except ChildProcessError:
                            pass  # not our child (launched by another process, or reaped already)


def _settled_for(job: Job, worker_id: str | None, done: Recovered) -> bool:
    """Whether recovery's ``done`` settled what ``job`` had started."""
    if job.kind is JobKind.SNAPSHOT:
        return done.operation == "snapshot" and done.instance.id == worker_id
    if job.kind is JobKind.RESTORE:
        return (done.operation == "restore" and done.artifact == job.artifact
                and done.instance.created_at >= job.created_at - timedelta(seconds=1))
    return False
