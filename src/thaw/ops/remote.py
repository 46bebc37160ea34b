"""``AgentOperations``: every operation asked of the node agent; jobs followed to their end with progress."""

from __future__ import annotations

import time
from pathlib import Path

from thaw.api.client import AgentClient
from thaw.api.models import (
    ArtifactSummary,
    Deleted,
    Inspection,
    Job,
    JobState,
    Recovery,
    RestoreResult,
    SnapshotResult,
    Swept,
    VerifyResult,
    Worker,
)
from thaw.errors import AgentError, QuiesceTimeout, ThawError, WorkerError, rebuild
from thaw.listen import ParkAtListen
from thaw.model import GpuTarget, check_name
from thaw.model.manifest import HttpCanaryRequest
from thaw.ops.base import Progress

#: how long the CLI follows an agent job before it gives up waiting (the job itself goes on)
JOB_TIMEOUT_S = 3600.0
#: how often `wait_ready` asks the agent whether the worker parked
POLL_S = 0.1


class AgentOperations:
    """Operations through a node agent's API (thaw.api.client); the agent runs the pipeline."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client
        self.where = f"the agent at {client.where}"
        self.store_name = f"the store of {self.where}"

    # ---- workers ----
    def launch(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path,
               park: ParkAtListen | None = None) -> Worker:
        return self.client.launch(name, argv, env=env, cwd=str(cwd), park_at_listen=park)

    def wait_ready(self, worker: str, timeout: float) -> Worker:
        deadline = time.monotonic() + timeout
        while True:
            w = self.client.worker(worker)
            if w.parked:
                return w
            if not w.alive:
                raise WorkerError(f"worker {w.name!r} exited before reaching its quiesce point",
                                  hint=f"its log: {Path(w.control_dir) / 'worker.log'}")
            if time.monotonic() >= deadline:
                raise QuiesceTimeout(
                    f"worker {w.name!r} did not reach its quiesce point within {timeout:.0f}s",
                    hint="does it call thaw.worker.quiesce() after warm-up? raise --ready-timeout if warm-up is slow",
                )
            time.sleep(POLL_S)

    def workers(self, *, include_gone: bool = False) -> list[Worker]:
        return self.client.workers(include_gone=include_gone)

    def worker(self, ref: str) -> Worker:
        try:
            return self.client.worker(check_name(ref, what="worker name"))
        except AgentError as exc:
            raise exc.original() from None  # WorkerNotFound as itself

    def release(self, worker: str) -> Worker:
        return self.client.release(check_name(worker, what="worker name"))

    def stop(self, worker: str) -> Worker:
        return self.client.stop(check_name(worker, what="worker name"))

    def recover(self) -> list[Recovery]:
        return self.client.recover()

    def sweep(self, older_than_s: float | None) -> Swept:
        return self.client.sweep(older_than_s)

    # ---- snapshot and restore: agent jobs ----
    def snapshot(self, worker: str, artifact: str, *, leave_running: bool, ready_timeout: float,
                 canary_http: list[HttpCanaryRequest], progress: Progress) -> SnapshotResult:
        job = self._follow(self.client.snapshot(worker, artifact, leave_running=leave_running,
                                                ready_timeout=ready_timeout, canary_http=canary_http), progress)
        assert isinstance(job.result, SnapshotResult)  # the job's kind says so (JobResult's discriminator)
        return job.result

    def restore(self, artifact: str, *, name: str | None, gpu: GpuTarget | None, verify_canary: bool,
                digest: str | None, progress: Progress) -> RestoreResult:
        job = self._follow(self.client.restore(artifact, name=name, gpu=gpu, verify_canary=verify_canary,
                                               digest=digest), progress)
        assert isinstance(job.result, RestoreResult)
        return job.result

    # ---- artifacts ----
    def artifacts(self) -> list[ArtifactSummary]:
        return self.client.artifacts()

    def inspect(self, artifact: str) -> Inspection:
        return self.client.inspect(check_name(artifact))

    def verify(self, artifact: str, *, digest: str | None, progress: Progress) -> VerifyResult:
        job = self._follow(self.client.verify(check_name(artifact), digest=digest), progress)
        assert isinstance(job.result, VerifyResult)
        return job.result

    def delete(self, artifact: str) -> Deleted:
        return self.client.delete(check_name(artifact))

    def close(self) -> None:
        self.client.close()

    def _follow(self, job: Job, progress: Progress, timeout: float = JOB_TIMEOUT_S) -> Job:
        """Follow ``job`` to its end, showing its phase; the finished job, or its error raised as itself."""
        deadline = time.monotonic() + timeout
        while not job.state.finished:
            if job.progress is not None:
                progress(job.progress.phase, job.progress.fraction, f"{job.progress.detail} (agent job {job.id})")
            if time.monotonic() > deadline:
                raise ThawError(f"agent job {job.id} did not finish within {timeout:.0f}s",
                                hint="`thaw agent status` shows it; it may still finish")
            job = self.client.job(job.id, wait=2.0)
        if job.state is JobState.FAILED:
            err = job.error
            if err is None:
                raise ThawError(f"{job.kind.value} job {job.id} on node {job.node} failed without a reason")
            raise rebuild(err.kind or "ThawError", err.message, hint=err.hint, reason=err.reason,
                          attributes=err.detail)
        return job
