"""The result of ``thaw bench``: one JSON document, versioned, validated on read.

``thaw cost`` and ``thaw bench report`` read it back with :func:`load_result`, which
refuses another schema version with a clear error. docs/bench.md describes every field;
docs/bench.schema.json is this module's JSON Schema, checked against it by a test — change a
model here and that test says to bump ``SCHEMA_VERSION`` and regenerate the file
(``thaw bench schema > docs/bench.schema.json``).

Every duration is in seconds, every size in bytes, every throughput in bytes per second.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thaw.errors import ConfigError

SCHEMA_VERSION = 1

PageCache = Literal["warm", "dropped"]
Mode = Literal["sequential", "concurrent"]


class _Model(BaseModel):
    # a field this version does not know is an error: an old reader never half-reads a newer result
    model_config = ConfigDict(extra="forbid")


class Distribution(_Model):
    """Order statistics of a set of samples; every figure is None when there are none."""

    count: int
    min: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None
    mean: float | None = None


class Phase(_Model):
    """A phase and the phases measured inside it.

    Where a phase has children, the last one is ``unaccounted``: the phase's own duration
    minus its children's, i.e. the time that no sub-phase explains. It is signed: a negative
    value means the children overlap (which thaw's sequential phases never do).
    """

    name: str
    seconds: float
    children: list[Phase] = Field(default_factory=list)


class Failure(_Model):
    reason: str = Field(description="ThawError.reason: canary_mismatch, restore, criu, answer_timeout, ...")
    message: str


# ---- the machine --------------------------------------------------------------------------------


class Gpu(_Model):
    index: int
    name: str
    uuid: str
    memory_total: int
    driver: str
    compute_capability: str = ""


class Storage(_Model):
    """Where artifacts are read from: a path, its file system and block device."""

    role: Literal["store", "staging"]
    path: str
    filesystem: str | None = None
    source: str | None = Field(default=None, description="the mounted device or remote, as /proc/mounts names it")
    rotational: bool | None = Field(default=None, description="spinning disk (True), SSD/NVMe/RAM (False)")
    free_bytes: int | None = None


class Criu(_Model):
    version: str
    path: str
    source: str = Field(description="host | portable tree | THAW_CRIU, as thaw.criu found it")


class HostWarmth(_Model):
    """Whether host memory was touched before timing (issue #14: memory grows on first touch)."""

    pretouched_bytes: int = 0
    pretouch_seconds: float | None = None


class Machine(_Model):
    hostname: str
    kernel: str
    os: str
    cpu_model: str
    cpu_count: int
    memory_total: int
    gpus: list[Gpu] = Field(default_factory=list)
    cuda_driver: str | None = None
    torch: str | None = None
    python: str
    thaw: str
    criu: Criu | None = None
    thp_enabled: str | None = Field(default=None, description="/sys/kernel/mm/transparent_hugepage/enabled")
    thp_defrag: str | None = None
    storage: list[Storage] = Field(default_factory=list)
    host: HostWarmth = Field(default_factory=HostWarmth)


# ---- what was run -------------------------------------------------------------------------------


class Answer(_Model):
    """How the bench asks a worker for its first answer.

    ``canary``: the answer is the canary exchange thaw does anyway — a cold start has answered when
    it parked with its canary recorded, a restore when its canary matched. ``http``: a request to
    the worker after it left its quiesce point, on ``<control dir>/<socket>`` or on TCP ``port``
    inside the worker's network namespace.
    """

    kind: Literal["canary", "http"]
    path: str | None = None
    method: Literal["GET", "POST"] = "GET"
    body: object = None
    socket: str | None = "http.sock"
    port: int | None = None
    compare: list[str] = Field(default_factory=list,
                               description="dotted paths of the answer's JSON that must be identical across "
                                           "copies; [] compares the whole body")
    timeout: float = 120.0


class Plan(_Model):
    name: str
    argv: list[str]
    artifact: str
    artifact_given: bool = Field(description="an existing artifact was benchmarked (no snapshot taken)")
    cold: int
    restores: int
    concurrency: int
    page_cache: list[PageCache]
    pretouch_bytes: int = 0
    time_limit: float | None = Field(default=None, description="seconds after which no new cold start or restore began")
    gpus: list[str] = Field(default_factory=list, description="restore targets, round-robin; [] = as recorded")
    through: str = Field(description="local, or the agent's address")
    answer: Answer


# ---- what was measured --------------------------------------------------------------------------


class ColdStart(_Model):
    index: int
    page_cache: PageCache
    ok: bool
    seconds: float | None = Field(default=None, description="process start → first answer")
    phases: Phase | None = None
    failure: Failure | None = None


class Snapshot(_Model):
    artifact_id: str
    digest: str
    image_bytes: int
    gpu_bytes: int | None = Field(default=None, description="device memory the worker held at the lock: "
                                                            "what a restore must copy back to the GPU")
    released_bytes: int = Field(description="memory released before the snapshot (thaw.memory regions)")
    seconds: float | None = Field(default=None, description="None when an existing artifact was used")
    phases: Phase | None = None


class Restore(_Model):
    index: int
    mode: Mode
    page_cache: PageCache
    wave: int = Field(description="sequential: the restore's number; concurrent: which group of C ran together")
    gpu: str | None = None
    ok: bool
    seconds: float | None = Field(default=None, description="restore request → first answer")
    phases: Phase | None = None
    canary: Literal["passed", "mismatch", "unchecked"] | None = None
    answer_matches: bool | None = Field(default=None, description="HTTP answer identical to the reference")
    failure: Failure | None = None


class Floor(_Model):
    """What the hardware allows: the bytes that must move over the bandwidth they move at.

    ``seconds`` is the larger of the two terms (reading the image and filling the GPU can
    overlap, so neither adds to the other); a term whose bandwidth was not measured is None.
    """

    page_cache: PageCache
    gpu_bytes: int | None = None
    h2d_bandwidth: float | None = Field(default=None, description="pinned host→device copy, measured with torch")
    gpu_seconds: float | None = None
    image_bytes: int
    read_bandwidth: float | None = Field(default=None, description="reading the image's files, measured here")
    read_seconds: float | None = None
    seconds: float | None = None


class Summary(_Model):
    """One set of restores: a mode (sequential, or C at once) in one page-cache state."""

    mode: Mode
    page_cache: PageCache
    concurrency: int
    attempts: int
    successes: int
    success_rate: float | None = None
    success_rate_lower_95: float | None = Field(default=None, description="Clopper-Pearson lower bound")
    exact: int = Field(description="successes whose every check (canary, answer) ran and agreed")
    canary_mismatches: int
    answer_mismatches: int
    latency: Distribution = Field(description="restore → first answer, successful restores")
    phases: dict[str, Distribution] = Field(default_factory=dict,
                                            description="each phase by its path in the tree, e.g. restore/criu_restore")
    read_throughput: Distribution = Field(description="image bytes / fetch seconds")
    speedup_p50: float | None = Field(default=None, description="cold start p50 / restore p50, same page cache")
    floor_multiple_p50: float | None = Field(default=None, description="restore p50 / the physical floor")


class BenchResult(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["thaw.bench"] = "thaw.bench"
    started_at: datetime
    finished_at: datetime
    complete: bool = Field(description="every planned run was made")
    stopped: str | None = Field(default=None, description="why not: the time limit, an interruption, an error")
    plan: Plan
    machine: Machine
    reference: Literal["cold-start", "first-restore", "none"] = Field(
        description="what restored answers are compared with: the cold starts' answer when two or more agreed")
    cold_starts: list[ColdStart] = Field(default_factory=list)
    cold_summary: dict[str, Distribution] = Field(default_factory=dict, description="by page cache: warm, dropped")
    snapshot: Snapshot | None = Field(description="None when the run stopped before it had one")
    restores: list[Restore] = Field(default_factory=list)
    summaries: list[Summary] = Field(default_factory=list)
    floors: list[Floor] = Field(default_factory=list)


def load_result(path: Path) -> BenchResult:
    """Read and check a ``thaw bench`` result; a ConfigError names what is wrong with it."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("bench result", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return BenchResult.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "document"
        version_hint = "it was written by another version of thaw bench; re-render it with that version" \
            if where.startswith("schema_version") else "is it the result.json that `thaw bench` wrote?"
        raise ConfigError("bench result", f"{path} is not a thaw bench result (schema v{SCHEMA_VERSION}): "
                                          f"{where}: {first.get('msg')}", hint=version_hint) from None
