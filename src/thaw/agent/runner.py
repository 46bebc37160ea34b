"""Running long operations as jobs: accept (hold, record, audit), run on a thread with progress, finish.

A job is accepted in the request: the worker and artifact are held first (a second request
for them is refused at once, 409), then the job is written to the book and the audit log.
It runs on the agent's thread pool through thaw.ops.LocalOperations; every pipeline phase
is recorded as the job's progress. Its holds are dropped before it reads as finished, so a
client that saw it finish may start the next operation on the same worker at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from thaw.agent import pods
from thaw.agent.audit import AuditLog
from thaw.agent.holds import Holds
from thaw.agent.jobs import JobBook, new_job_id
from thaw.agent.metrics import Metrics
from thaw.api.models import (
    Job,
    JobError,
    JobKind,
    JobResult,
    RestoreRequest,
    RestoreResult,
    SnapshotRequest,
    SnapshotResult,
)
from thaw.errors import BusyError, CanaryMismatch, ThawError
from thaw.ops import LocalOperations
from thaw.pipeline import Instance, canary
from thaw.sandbox.pod import Anchor

#: a job's work: given its progress callback, its result
Work = Callable[[Callable[[str, float | None, str], None]], JobResult]


class JobRunner:
    def __init__(self, ops: LocalOperations, book: JobBook, holds: Holds, audit: AuditLog, metrics: Metrics, *,
                 node: str, max_jobs: int) -> None:
        self.ops = ops
        self.book = book
        self.holds = holds
        self.audit = audit
        self.metrics = metrics
        self.node = node
        self._pool = ThreadPoolExecutor(max_workers=max_jobs, thread_name_prefix="thaw-job")
        self._closing = False

    def close(self, wait: bool = True) -> None:
        self._closing = True
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # ---- the operations ------------------------------------------------------------------------

    def snapshot(self, inst: Instance, req: SnapshotRequest, caller: dict[str, Any]) -> Job:
        job = self._accept(JobKind.SNAPSHOT, req.model_dump(mode="json"), caller, worker=inst.id,
                           artifact=req.artifact, precheck=lambda: self._refuse_taken(req.artifact),
                           holds={"worker": inst.id, "worker_label": inst.name, "artifact": req.artifact,
                                  "exclusive": True}, key=req.idempotency_key)
        self.book.journal(job.id, worker_id=inst.id)  # which recovery record is this job's (service.recover)

        def work(progress: Callable[[str, float | None, str], None]) -> JobResult:
            result = self.ops.snapshot(inst.id, req.artifact, leave_running=req.leave_running,
                                       ready_timeout=req.ready_timeout, canary_http=req.canary_http,
                                       progress=progress)
            self._observe("snapshot", "write", result)
            return result

        return self._launch(job, work)

    def restore(self, req: RestoreRequest, caller: dict[str, Any], *, into: Anchor | None = None) -> Job:
        """``into``: the pod entrypoint to restore into (its namespaces, cgroup and root), on its own GPU."""
        job = self._accept(JobKind.RESTORE, req.model_dump(mode="json"), caller, worker=req.name,
                           artifact=req.artifact, holds={"artifact": req.artifact}, key=req.idempotency_key)

        def work(progress: Callable[[str, float | None, str], None]) -> JobResult:
            gpu = req.gpu if req.gpu is not None or into is None else pods.gpu_of(into)
            try:
                result = self.ops.restore(req.artifact, name=req.name, gpu=gpu, verify_canary=req.verify_canary,
                                          digest=req.digest, progress=progress, into=into)
            except CanaryMismatch:
                self.metrics.canary.labels("mismatch").inc()
                raise
            self.metrics.canary.labels("match" if result.canary.checked else "skipped").inc()
            self._observe("restore", "read", result)
            return result

        return self._launch(job, work)

    def verify(self, name: str, caller: dict[str, Any], *, digest: str | None = None) -> Job:
        job = self._accept(JobKind.VERIFY, {"artifact": name, "digest": digest}, caller, worker=None, artifact=name,
                           holds={"artifact": name})

        def work(progress: Callable[[str, float | None, str], None]) -> JobResult:
            result = self.ops.verify(name, digest=digest, progress=progress)
            self.metrics.observe_timings("verify", {"verify": result.seconds})
            self.metrics.artifact_bytes.labels("verify").observe(result.bytes)
            self.metrics.observe_transfer("read", result.bytes, result.read_gbps)
            return result

        return self._launch(job, work)

    def _observe(self, operation: str, direction: str, result: SnapshotResult | RestoreResult) -> None:
        gbps = result.write_gbps if isinstance(result, SnapshotResult) else result.read_gbps
        self.metrics.observe_timings(operation, result.timings)
        self.metrics.artifact_bytes.labels(operation).observe(result.bytes)
        self.metrics.observe_transfer(direction, result.bytes, gbps)

    # ---- accepting and running -----------------------------------------------------------------

    def _accept(self, kind: JobKind, request: dict[str, Any], caller: dict[str, Any], *, worker: str | None,
                artifact: str | None, holds: dict[str, Any], precheck: Callable[[], None] | None = None,
                key: str | None = None) -> Job:
        if self._closing:
            raise BusyError(f"agent on {self.node} is shutting down")
        job_id = new_job_id()
        self.holds.take(job_id, kind.value, **holds)  # first: a concurrent request for the same worker gets 409
        try:
            if precheck:
                precheck()
            job = self.book.create(kind, worker=worker, artifact=artifact, request=request, caller=caller,
                                   node=self.node, job_id=job_id, key=key)
        except BaseException:
            self.holds.drop(job_id)
            raise
        self.audit.record(kind.value, "accepted", caller=caller, worker=worker, artifact=artifact, job=job.id)
        return job

    def _refuse_taken(self, artifact: str) -> None:
        if self.ops.store.exists(artifact):
            raise BusyError(f"an artifact named {artifact!r} already exists in {self.ops.store.url}",
                            hint="pick another name, or delete the old one first")

    def _launch(self, job: Job, work: Work) -> Job:
        try:
            self._pool.submit(self._execute, job, work)
        except RuntimeError:  # the pool was shut down between accepting and queueing: the agent is stopping
            self.holds.drop(job.id)
            self.book.fail(job.id, JobError(reason="busy", message=f"agent on {self.node} is shutting down"))
            raise BusyError(f"agent on {self.node} is shutting down") from None
        return job

    def _execute(self, job: Job, work: Work) -> None:
        op = job.kind.value
        self.book.start(job.id)
        self.metrics.jobs_running.labels(op).inc()
        t0 = time.perf_counter()
        result: JobResult | None = None
        error: JobError | None = None
        try:
            result = work(self._progress(job))
        except ThawError as exc:
            error = job_error(exc)
        except Exception as exc:  # noqa: BLE001 - a bug, not an expected failure: still a clear, recorded job error
            error = JobError(reason="internal", message=f"{type(exc).__name__}: {exc}")
        finally:
            # free the worker and artifact before the job reads as finished: a client that saw it
            # finish may start the next operation on them at once
            self.holds.drop(job.id)
            self.metrics.jobs_running.labels(op).dec()
        seconds = time.perf_counter() - t0
        if error is not None or result is None:
            error = error or JobError(reason="internal", message="no result")
            self.metrics.failures.labels(op, error.reason).inc()
            self.metrics.operation_seconds.labels(op, "failed").observe(seconds)
            self.audit.record(op, "failed", caller=job.caller, worker=job.worker, artifact=job.artifact,
                              job=job.id, reason=error.reason, message=error.message)
            self.book.fail(job.id, error)
            return
        self.metrics.operation_seconds.labels(op, "succeeded").observe(seconds)
        worker = (result.worker_id if isinstance(result, SnapshotResult)
                  else result.worker.id if isinstance(result, RestoreResult) else job.worker)
        self.audit.record(op, "succeeded", caller=job.caller, worker=worker, artifact=job.artifact,
                          artifact_id=result.artifact_id, digest=result.digest, job=job.id)
        self.book.succeed(job.id, result)

    def _progress(self, job: Job) -> Callable[[str, float | None, str], None]:
        def progress(phase: str, fraction: float | None, detail: str) -> None:
            self.book.progress(job.id, phase, fraction, detail)

        return progress


def job_error(exc: ThawError) -> JobError:
    """A ThawError as a job's recorded error: its type, reason, message, hint and the facts a user needs."""
    return JobError(reason=exc.reason, message=exc.message, hint=exc.hint, kind=type(exc).__name__,
                    detail=error_detail(exc))


def error_detail(exc: ThawError) -> dict[str, Any]:
    """The facts an error carries beyond its message (for job records and API error bodies)."""
    if isinstance(exc, CanaryMismatch):
        return {"expected": exc.expected, "got": exc.got, "differences": canary.differences(exc.expected, exc.got),
                "restored_worker": "killed", "artifact": "kept"}
    detail: dict[str, Any] = {}
    for attr in ("field", "path", "operation", "log_tail"):
        value = getattr(exc, attr, None)
        if value:
            detail[attr] = str(value)
    return detail
