"""``Operations``: everything the ``thaw`` command does, behind one interface with two implementations.

``LocalOperations`` runs the pipeline in this process; ``AgentOperations`` asks the node
agent, which runs the same pipeline as jobs (holding the worker, auditing, checking the
canary). Both return the same typed results (thaw.api models), so a command prints the
same thing, ``--json`` or not, whichever ran it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from thaw.api.models import (
    ArtifactSummary,
    Deleted,
    Inspection,
    Recovery,
    RestoreResult,
    SnapshotResult,
    Swept,
    VerifyResult,
    Worker,
)
from thaw.listen import ParkAtListen
from thaw.model import GpuTarget
from thaw.model.manifest import HttpCanaryRequest

#: progress callback: (phase, fraction done or None, detail)
Progress = Callable[[str, float | None, str], None]


class Operations(Protocol):
    """What the CLI can do to workers and artifacts; see LocalOperations and AgentOperations."""

    #: where the operations run, for messages ("this process", "the agent at /run/thaw/agent.sock")
    where: str
    #: the store they use, for messages (its URL here; "the store of the agent at ..." through one)
    store_name: str

    def launch(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path,
               park: ParkAtListen | None = None) -> Worker:
        """Start ``argv`` as a snapshot-able worker in a new sandbox (``park``: an unmodified server)."""
        ...

    def wait_ready(self, worker: str, timeout: float) -> Worker:
        """Wait until the worker parks at its quiesce point."""
        ...

    def workers(self, *, include_gone: bool = False) -> list[Worker]: ...

    def worker(self, ref: str) -> Worker:
        """One worker by id or name, alive or not (WorkerNotFound when there is none)."""
        ...

    def release(self, worker: str) -> Worker:
        """Let a parked worker go on serving without a snapshot."""
        ...

    def stop(self, worker: str) -> Worker:
        """Stop a worker and remove its sandbox."""
        ...

    def recover(self) -> list[Recovery]:
        """Settle operations whose process died without unwinding (kill half-restored copies, ...)."""
        ...

    def sweep(self, older_than_s: float | None) -> Swept:
        """Remove what crashed operations left: staging of dead owners (with an age: what nobody can claim)."""
        ...

    def snapshot(self, worker: str, artifact: str, *, leave_running: bool, ready_timeout: float,
                 canary_http: list[HttpCanaryRequest], progress: Progress) -> SnapshotResult: ...

    def restore(self, artifact: str, *, name: str | None, gpu: GpuTarget | None, verify_canary: bool,
                digest: str | None, progress: Progress) -> RestoreResult:
        """Restore ``artifact`` (only if it has exactly ``digest``, when given)."""
        ...

    def artifacts(self) -> list[ArtifactSummary]: ...

    def inspect(self, artifact: str) -> Inspection:
        """A complete artifact's manifest (IntegrityError when a file it lists is missing) and its signature."""
        ...

    def verify(self, artifact: str, *, digest: str | None, progress: Progress) -> VerifyResult: ...

    def delete(self, artifact: str) -> Deleted: ...

    def close(self) -> None: ...
