"""The agent's job book: every long operation, recorded durably in SQLite.

A job is written before it starts and updated at every phase, so that an agent that
was killed mid-job knows on restart which jobs were cut short, in which phase, and
what each had done (its *journal*: the worker it froze, the artifact it was staging,
the restore it had started), which is what recovery needs to roll back.

SQLite in WAL mode, one connection guarded by a lock: jobs change a few times per
operation, so contention is not a concern; durability is (``synchronous=FULL``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from thaw.agent.models import Job, JobError, JobKind, JobState, Progress

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    worker TEXT,
    artifact TEXT,
    request TEXT NOT NULL,
    caller TEXT NOT NULL,
    node TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    progress TEXT,
    result TEXT,
    error TEXT,
    journal TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS verified (
    instance_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    at TEXT NOT NULL
);
"""


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def now() -> datetime:
    return datetime.now(UTC)


class JobBook:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- writing ----------------------------------------------------------------------

    def create(self, kind: JobKind, *, worker: str | None, artifact: str | None, request: dict[str, Any],
               caller: dict[str, Any], node: str, job_id: str | None = None, key: str | None = None) -> Job:
        """Record a new job; with ``key``, also that this idempotency key started it (``by_key``)."""
        job = Job(id=job_id or new_job_id(), kind=kind, state=JobState.PENDING, worker=worker, artifact=artifact,
                  request=request, caller=caller, node=node, created_at=now())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the job and its key together, or neither
            try:
                self._db.execute(
                    "INSERT INTO jobs (id, kind, state, worker, artifact, request, caller, node, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, kind.value, job.state.value, worker, artifact, json.dumps(request), json.dumps(caller),
                     node, job.created_at.isoformat()),
                )
                if key:
                    self._db.execute("INSERT INTO idempotency (key, job_id) VALUES (?, ?)", (key, job.id))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return job

    def start(self, job_id: str) -> None:
        self._update(job_id, state=JobState.RUNNING.value, started_at=now().isoformat())

    def progress(self, job_id: str, phase: str, fraction: float | None, detail: str) -> None:
        p = Progress(phase=phase, fraction=fraction, detail=detail, at=now())
        self._update(job_id, progress=p.model_dump_json())

    def journal(self, job_id: str, **facts: Any) -> None:
        """Record what the job has done so far (merged into its journal), for recovery after a crash."""
        with self._lock:
            row = self._db.execute("SELECT journal FROM jobs WHERE id = ?", (job_id,)).fetchone()
            merged = {**json.loads(row[0] if row else "{}"), **facts}
            self._db.execute("UPDATE jobs SET journal = ? WHERE id = ?", (json.dumps(merged, default=str), job_id))

    def succeed(self, job_id: str, result: dict[str, Any]) -> None:
        self._update(job_id, state=JobState.SUCCEEDED.value, finished_at=now().isoformat(),
                     result=json.dumps(result, default=str))

    def fail(self, job_id: str, error: JobError) -> None:
        self._update(job_id, state=JobState.FAILED.value, finished_at=now().isoformat(),
                     error=error.model_dump_json())

    def mark_verified(self, instance_id: str, job_id: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO verified VALUES (?, ?, ?)",
                             (instance_id, job_id, now().isoformat()))

    def _update(self, job_id: str, **cols: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in cols)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {names} WHERE id = ?", (*cols.values(), job_id))

    # ---- reading ----------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def by_key(self, key: str) -> Job | None:
        """The job an idempotency key started, if any."""
        with self._lock:
            row = self._db.execute("SELECT job_id FROM idempotency WHERE key = ?", (key,)).fetchone()
        return self.get(row[0]) if row else None

    def journal_of(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute("SELECT journal FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def list(self, *, limit: int = 100, unfinished: bool = False) -> list[Job]:
        where = "WHERE state IN ('pending', 'running')" if unfinished else ""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY created_at DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [_job(r) for r in rows]

    def verified(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT instance_id FROM verified")}


_COLUMNS = ("id, kind, state, worker, artifact, request, caller, node, created_at, started_at, finished_at, "
            "progress, result, error")


def _job(row: tuple[Any, ...]) -> Job:
    (id_, kind, state, worker, artifact, request, caller, node, created, started, finished, progress, result,
     error) = row
    return Job(
        id=id_, kind=JobKind(kind), state=JobState(state), worker=worker, artifact=artifact,
        request=json.loads(request), caller=json.loads(caller), node=node,
        created_at=datetime.fromisoformat(created),
        started_at=datetime.fromisoformat(started) if started else None,
        finished_at=datetime.fromisoformat(finished) if finished else None,
        progress=Progress.model_validate_json(progress) if progress else None,
        result=json.loads(result) if result else None,
        error=JobError.model_validate_json(error) if error else None,
    )
