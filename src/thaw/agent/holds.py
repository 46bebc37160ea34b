"""Which job holds which worker and artifact: one operation per worker at a time.

Holds are taken when a request is accepted, before its job is queued, so that a
second request for a busy worker is refused at once (409) with the holder's id and
operation. The pipeline's per-worker ``flock`` (instances.Instance.operation) is the
second line, for operations started outside this agent (``thaw snapshot`` by hand).

Artifacts: a snapshot holds its target name exclusively; restores and verifies hold
theirs shared (any number at once); a delete needs it free.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from thaw.errors import BusyError


@dataclass
class _ArtifactHold:
    exclusive: str | None = None  # job id
    shared: dict[str, str] = field(default_factory=dict)  # job id -> operation


class Holds:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: dict[str, tuple[str, str]] = {}  # instance id -> (job id, operation)
        self._artifacts: dict[str, _ArtifactHold] = {}

    def take(self, holder: str, operation: str, *, worker: str | None = None, worker_label: str | None = None,
             artifact: str | None = None, exclusive: bool = False) -> None:
        """Hold ``worker`` (instance id) and ``artifact`` for ``holder``, or raise BusyError saying who has them."""
        with self._lock:
            if worker is not None and worker in self._workers:
                job, op = self._workers[worker]
                raise BusyError(f"worker {worker_label or worker!r} is busy: {op} (job {job}) is running on it",
                                hint=f"wait for job {job} to finish (GET /v1/jobs/{job})")
            if artifact is not None:
                hold = self._artifacts.get(artifact, _ArtifactHold())
                if hold.exclusive is not None:
                    raise BusyError(f"artifact {artifact!r} is being written by job {hold.exclusive}",
                                    hint=f"wait for job {hold.exclusive} to finish")
                if exclusive and hold.shared:
                    job, op = next(iter(hold.shared.items()))
                    raise BusyError(f"artifact {artifact!r} is in use: {op} (job {job})",
                                    hint=f"wait for job {job} to finish")
                if exclusive:
                    hold.exclusive = holder
                else:
                    hold.shared[holder] = operation
                self._artifacts[artifact] = hold
            if worker is not None:
                self._workers[worker] = (holder, operation)

    def drop(self, holder: str) -> None:
        with self._lock:
            for w in [w for w, (job, _) in self._workers.items() if job == holder]:
                del self._workers[w]
            for name in list(self._artifacts):
                hold = self._artifacts[name]
                if hold.exclusive == holder:
                    hold.exclusive = None
                hold.shared.pop(holder, None)
                if hold.exclusive is None and not hold.shared:
                    del self._artifacts[name]

    @contextmanager
    def held(self, holder: str, operation: str, **what: object) -> Iterator[None]:
        self.take(holder, operation, **what)  # type: ignore[arg-type]
        try:
            yield
        finally:
            self.drop(holder)

    def worker_holder(self, instance_id: str) -> str | None:
        with self._lock:
            held = self._workers.get(instance_id)
        return held[0] if held else None
