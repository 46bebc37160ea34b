"""The agent's HTTP API, as pydantic models: every request and response body.

The agent (server), its client (thaw.api.client), the CLI and the Kubernetes operator all
import these, so the wire format is declared once. The results are also what the CLI prints
with ``--json``, whether it ran an operation itself or through an agent (thaw.ops).
Names are checked with ``thaw.model.check_name`` on the way in: a name with ``..`` or ``/``
never reaches the pipeline.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thaw.errors import ConfigError
from thaw.listen.spec import ParkAtListen
from thaw.model import GpuInfo, GpuTarget, Manifest, check_name
from thaw.model.manifest import NAME_PATTERN, HttpCanaryRequest, check_digest

API_VERSION = "v1"


def _name(value: str, what: str) -> str:
    try:
        return check_name(value, what=what)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


class _Request(BaseModel):
    # a misspelt field is an error, not a silently ignored option
    model_config = ConfigDict(extra="forbid")


# ---- requests ---------------------------------------------------------------------------


class PodRef(_Request):
    """A pod on the agent's node whose thaw entrypoint a worker is snapshotted from or restored into."""

    namespace: str = Field(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    name: str = Field(max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
    uid: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
                     description="metadata.uid: the agent finds the pod's processes by it (their cgroup path)")


#: an idempotency key: a retried start with the same key returns the job the first one started
IdempotencyKey = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/-]+$",
                       description="e.g. the Kubernetes object's uid: a retry with the same key returns the "
                                   "existing job instead of starting another (or answering 409)")


class LaunchRequest(_Request):
    """``POST /v1/workers``: start a command as a snapshot-able worker in a thaw sandbox.

    Everything here ends up in execve(2): what it cannot take (a NUL byte, an empty command,
    a variable name with '=', a path longer than the kernel's) is a 422 here, never a 500 later.
    """

    name: str = Field(description="worker name (lowercase letters, digits, '.', '_', '-')",
                      json_schema_extra={"pattern": f"^{NAME_PATTERN}$"})
    argv: list[str] = Field(min_length=1, max_length=4096,
                            description="the command; argv[0] absolute or on the agent's PATH")
    env: dict[str, str] = Field(default_factory=dict, max_length=4096,
                                description="environment of the worker; the agent's own environment is NOT inherited")
    cwd: str = Field(default="/", max_length=4095, description="absolute working directory")
    park_at_listen: ParkAtListen | None = Field(
        default=None, description="an unmodified Python server: park it at its first listening socket "
                                  "(thaw run --park-at-listen; docs/integrations.md)")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return _name(v, "worker name")

    @field_validator("cwd")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("cwd must be an absolute path")
        if "\0" in v or any(len(part.encode()) > 255 for part in v.split("/")):
            raise ValueError("cwd holds a NUL byte or a name longer than 255 bytes")
        return v

    @field_validator("argv")
    @classmethod
    def _executable(cls, v: list[str]) -> list[str]:
        if not v[0]:
            raise ValueError("argv[0] (the command) is empty")
        if any("\0" in a for a in v):
            raise ValueError("an argument holds a NUL byte")
        return v

    @field_validator("env")
    @classmethod
    def _variables(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise ValueError(f"{key!r} cannot be an environment variable (empty, '=' or a NUL byte)")
        return v


class SnapshotRequest(_Request):
    """``POST /v1/snapshots``: snapshot a worker (by name or instance id) into an artifact."""

    worker: str
    artifact: str
    leave_running: bool = Field(default=False, description="keep the original serving after the snapshot")
    ready_timeout: float = Field(default=60.0, gt=0, le=3600, description="seconds to wait for the quiesce point")
    canary_http: list[HttpCanaryRequest] = Field(
        default_factory=list, max_length=64,
        description="requests the original answers after the snapshot; every restored copy must answer them alike "
                    "(thaw snapshot --canary-http)")
    pod: PodRef | None = Field(default=None, description="snapshot the worker that runs in this pod (its thaw "
                                                         "entrypoint's sandbox) rather than one named `worker`")
    idempotency_key: str | None = IdempotencyKey

    @field_validator("worker")
    @classmethod
    def _check_worker(cls, v: str) -> str:
        return _name(v, "worker name")

    @field_validator("artifact")
    @classmethod
    def _check_artifact(cls, v: str) -> str:
        return _name(v, "artifact name")

    @field_validator("canary_http", mode="before")
    @classmethod
    def _openai_style(cls, v: object) -> object:
        # {"prompt": ...} and {"messages": ...} are accepted as in a --canary-http file
        return [HttpCanaryRequest.of(r) if isinstance(r, dict) else r for r in v] if isinstance(v, list) else v


class RestoreRequest(_Request):
    """``POST /v1/restores``: restore an artifact as a new worker on this node."""

    artifact: str
    name: str | None = Field(default=None, description="name of the restored worker; default: the original's")
    gpu: GpuTarget | None = Field(default=None, description="GPU index or UUID to restore onto; default: as recorded")
    verify_canary: bool = Field(default=True, description="require the worker to reproduce its recorded canary")
    digest: str | None = Field(default=None, description="restore only if the artifact has exactly this digest "
                                                         "(sha256:<hex>, as a snapshot's result reports it)")

    @field_validator("digest")
    @classmethod
    def _check_digest(cls, v: str | None) -> str | None:
        try:
            return None if v is None else check_digest(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    pod: PodRef | None = Field(default=None, description="restore into this pod (its network namespace, cgroup and "
                                                         "root filesystem), whose thaw entrypoint waits for it")
    idempotency_key: str | None = IdempotencyKey

    @field_validator("artifact")
    @classmethod
    def _check_artifact(cls, v: str) -> str:
        return _name(v, "artifact name")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        return None if v is None else _name(v, "worker name")


# ---- responses --------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    reason: str = Field(description="machine-readable: invalid_request, unauthorized, not_found, busy, ...")
    message: str
    hint: str | None = None
    kind: str = Field(default="", description="the thaw.errors type the agent raised (a client raises it again)")
    retryable: bool = Field(default=False, description="whether the same request may succeed later")
    #: for invalid requests: which fields were wrong and why
    fields: list[dict[str, Any]] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict, description="the error's facts (field, path, log_tail, ...)")


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: ErrorDetail


class Worker(BaseModel):
    id: str = Field(description="instance id, unique on this node")
    name: str
    state: str = Field(description="starting | running | snapshotted | stopped | exited | failed")
    origin: str = Field(description="launched | restored")
    artifact: str | None = Field(default=None, description="the artifact it was restored from")
    node: str
    host_pid: int
    alive: bool
    parked: bool = Field(description="waiting at its quiesce point (can be snapshotted)")
    ready: bool = Field(description="alive and, if restored, its canary matched: may take traffic")
    busy: str | None = Field(default=None, description="id of the job holding this worker")
    control_dir: str = Field(description="host path of its control directory (its unix sockets live here)")
    created_at: datetime


class JobState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


class JobKind(str, Enum):
    SNAPSHOT = "snapshot"
    RESTORE = "restore"
    VERIFY = "verify"


class Progress(BaseModel):
    phase: str = Field(description="the pipeline phase running now (quiesce, dump, publish, fetch, criu_restore, ...)")
    fraction: float | None = None
    detail: str = ""
    at: datetime

    def text(self) -> str:
        """``dump 40% CRIU dump``: the phase, how far it is (when known), and what it does."""
        parts = [self.phase, f"{self.fraction:.0%}" if self.fraction is not None else "", self.detail]
        return " ".join(p for p in parts if p)


class JobError(BaseModel):
    reason: str = Field(description="ThawError.reason: checkpoint, restore, canary_mismatch, integrity, "
                                    "agent_restarted, ...")
    message: str
    hint: str | None = None
    kind: str = Field(default="", description="the thaw.errors type the job failed with")
    detail: dict[str, Any] = Field(default_factory=dict, description="e.g. canary expected/got/differences")


class Job(BaseModel):
    id: str
    kind: JobKind
    state: JobState
    worker: str | None = None
    artifact: str | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    caller: dict[str, Any] = Field(default_factory=dict)
    node: str = ""
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    result: JobResult | None = Field(default=None, description="SnapshotResult / RestoreResult / VerifyResult")
    error: JobError | None = None


class SnapshotResult(BaseModel):
    kind: Literal["snapshot"] = "snapshot"
    artifact: str
    artifact_id: str
    digest: str
    bytes: int
    timings: dict[str, float]
    write_gbps: float | None = None
    original: str = Field(description="what became of the original: stopped | running")
    worker_id: str = Field(description="instance id of the snapshotted worker")
    worker: str = Field(description="name of the snapshotted worker")


class CanaryReport(BaseModel):
    checked: bool
    match: bool | None = None
    expected: Any = None
    got: Any = None
    differences: list[str] = Field(default_factory=list)
    http_requests: int = Field(default=0, description="HTTP canary requests the copy answered as the original did")


class RestoreResult(BaseModel):
    kind: Literal["restore"] = "restore"
    worker: Worker
    artifact: str
    artifact_id: str
    digest: str
    bytes: int
    timings: dict[str, float]
    read_gbps: float | None = None
    canary: CanaryReport


class VerifyResult(BaseModel):
    kind: Literal["verify"] = "verify"
    artifact: str
    artifact_id: str
    digest: str
    bytes: int
    files: int
    expected_digest: bool = Field(default=False, description="the digest was also checked against the one asked for")
    trust: str = Field(default="", description="what the node's trust settings say of its signature")
    seconds: float
    read_gbps: float | None = None


#: a finished job's result, told apart by its ``kind``
JobResult = Annotated[SnapshotResult | RestoreResult | VerifyResult, Field(discriminator="kind")]


class Deleted(BaseModel):
    """``DELETE /v1/artifacts/{name}``, ``thaw rm``: what was deleted."""

    artifact: str
    artifact_id: str | None = Field(default=None, description="None for a leftover directory without a manifest")
    digest: str | None = None
    leftover: bool = Field(default=False, description="it was a directory without a manifest, not an artifact")


class Inspection(BaseModel):
    """``GET /v1/artifacts/{name}/inspect``, ``thaw inspect``: a complete artifact's manifest, and its signature."""

    manifest: Manifest
    trust: str = Field(description="what the node's trust settings say of its signature")


class Recovery(BaseModel):
    """An operation whose process died without unwinding, and what recovery did about it (``thaw gc``)."""

    operation: Literal["snapshot", "restore"]
    worker: Worker
    owner_pid: int = Field(description="the process that died running it")
    phase: str = Field(default="", description="how far it had got")
    notes: list[str] = Field(default_factory=list, description="what recovery did")


class SweepRequest(_Request):
    """``POST /v1/sweep``: remove what crashed operations left (``thaw gc``)."""

    older_than_s: float | None = Field(default=None, ge=0, le=10 * 365 * 86400,
                                       description="also what no owner on this node can claim once older than this "
                                                   "(other nodes' or earlier boots' staging, unfinished uploads, "
                                                   "directories of workers gone); None: only what dead owners left")


class Swept(BaseModel):
    """What a sweep removed (``thaw gc``; thaw.pipeline.cleanup)."""

    staging: list[str] = Field(default_factory=list, description="node-local staging entries removed")
    store_entries: int = Field(default=0, description="store staging entries, uploads and stale objects removed")
    instances: list[str] = Field(default_factory=list, description="ids of the instance directories pruned")


class ArtifactSummary(BaseModel):
    name: str
    artifact_id: str
    digest: str
    created_at: datetime
    bytes: int
    worker: str
    source_host: str
    gpus: int
    has_canary: bool


class AgentStatus(BaseModel):
    api: str = API_VERSION
    node: str
    version: str
    store: str
    staging: str
    pid: int
    started_at: datetime
    jobs_running: int
    workers_alive: int
    gpus: list[GpuInfo] = Field(default_factory=list, description="this node's GPUs")
    gpu_error: str | None = Field(default=None, description="why the GPUs could not be read (a broken driver): "
                                                            "then `gpus` is empty for that reason, not for none")


Job.model_rebuild()  # its result's types are declared after it
