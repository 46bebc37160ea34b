"""Phase names, and one operation's timings as a tree.

Every phase of a snapshot or a restore is timed; some phases have parts (the GPU
checkpoint is a lock and a checkpoint; a fetch reports the store's own steps). The
parts are *inside* their phase's time, so ``unaccounted`` — what no phase explains —
is the total minus the top-level phases only: a part is never subtracted twice.

On the wire (manifests, job results, Kubernetes status) timings are one flat mapping,
``{phase or part: seconds, ..., "total": s, "unaccounted": s}`` (:meth:`Timings.flat`).
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

TOTAL = "total"
UNACCOUNTED = "unaccounted"


class Phase(str, Enum):
    """The phases of thaw's operations; the values are the names on the wire and in metrics."""

    # snapshot
    QUIESCE = "quiesce"
    FREEZE_HOOKS = "freeze_hooks"
    GPU_CHECKPOINT = "gpu_checkpoint"
    DUMP = "dump"
    CANARY_RECORD = "canary_record"  # the original answers the HTTP canary before the manifest is published
    PUBLISH = "publish"
    RESUME_ORIGINAL = "resume_original"
    STOP_ORIGINAL = "stop_original"
    # restore
    FETCH = "fetch"
    PLAN = "plan"
    WEIGHTS_PREFETCH = "weights_prefetch"
    JOIN_POD = "join_pod"  # a restore into a pod opens its namespaces, log FIFO and a clone of its root
    CRIU_RESTORE = "criu_restore"
    GPU_RESTORE = "gpu_restore"
    THAW_HOOKS = "thaw_hooks"
    GO = "go"
    CANARY_HTTP = "canary_http"  # the restored copy answers the HTTP canary as the original did
    # parts of the GPU phases (thaw.pipeline.gpu)
    CUDA_LOCK = "cuda_lock"
    CUDA_CHECKPOINT = "cuda_checkpoint"
    CUDA_RESTORE = "cuda_restore"
    CUDA_UNLOCK = "cuda_unlock"
    # verify (agent job)
    VERIFY = "verify"
    # where an agent job was before any pipeline phase ran (its recovery names them)
    QUEUE = "queue"
    START = "start"


#: after these snapshot phases the artifact is published and confirmed
PUBLISHED = (Phase.RESUME_ORIGINAL, Phase.STOP_ORIGINAL)


class PhaseTime(BaseModel):
    """One timed phase and the parts measured inside it."""

    model_config = ConfigDict(frozen=True)

    name: str
    seconds: float
    parts: list[PhaseTime] = Field(default_factory=list)


class Timings(BaseModel):
    """The timings of one operation: top-level phases (each with its parts) and the total."""

    model_config = ConfigDict(frozen=True)

    phases: list[PhaseTime] = Field(default_factory=list)
    total: float = 0.0

    @property
    def unaccounted(self) -> float:
        """What no top-level phase explains (parts are inside their phase, so they do not count again)."""
        return max(0.0, self.total - sum(p.seconds for p in self.phases))

    def seconds(self, name: str | Phase, default: float = 0.0) -> float:
        """The seconds of a phase or part by name (``default`` when it did not run)."""
        return self.flat().get(_name(name), default)

    def flat(self, *, totals: bool = True) -> dict[str, float]:
        """Every phase and part by name (a name timed twice adds up), then ``total`` and ``unaccounted``."""
        out: dict[str, float] = {}

        def add(phase: PhaseTime) -> None:
            out[phase.name] = round(out.get(phase.name, 0.0) + phase.seconds, 6)
            for part in phase.parts:
                add(part)

        for phase in self.phases:
            add(phase)
        if not totals:
            return out
        out[TOTAL] = round(self.total, 6)
        out[UNACCOUNTED] = round(self.unaccounted, 6)
        return out

    def summary(self) -> str:
        """One line: ``quiesce 3 ms, gpu_checkpoint 1.20 s (cuda_lock 2 ms, ...), ..., unaccounted 4 ms``."""

        def show(phase: PhaseTime) -> str:
            inner = f" ({', '.join(show(p) for p in phase.parts)})" if phase.parts else ""
            return f"{phase.name} {human_seconds(phase.seconds)}{inner}"

        return ", ".join([*(show(p) for p in self.phases), f"{UNACCOUNTED} {human_seconds(self.unaccounted)}"])


def human_seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def _name(name: str | Phase) -> str:
    return name.value if isinstance(name, Phase) else name


__all__ = ["PUBLISHED", "TOTAL", "UNACCOUNTED", "Phase", "PhaseTime", "Timings", "human_seconds"]
