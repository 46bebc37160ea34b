"""The agent's HTTP API, as pydantic models: every request and response body.

Clients (``thaw.agent.client``, the CLI, the Kubernetes operator) import these, so the
wire format is declared once. Names are checked with ``thaw.store.check_name`` on the
way in: a name with ``..`` or ``/`` never reaches the pipeline.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thaw.errors import ConfigError
from thaw.listen.spec import ParkAtListen
from thaw.store.manifest import NAME_PATTERN, HttpCanaryRequest, check_digest, check_name

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
    gpu: int | str | None = Field(default=None, description="GPU index or UUID to restore onto; default: as recorded")
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
    #: for invalid requests: which fields were wrong and why
    fields: list[dict[str, Any]] = Field(default_factory=list)


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


class JobError(BaseModel):
    reason: str = Field(description="ThawError.reason: checkpoint, restore, canary_mismatch, integrity, "
                                    "agent_restarted, ...")
    message: str
    hint: str | None = None
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
    result: dict[str, Any] | None = Field(default=None, description="SnapshotResult / RestoreResult / VerifyResult")
    error: JobError | None = None


class SnapshotResult(BaseModel):
    artifact: str
    artifact_id: str
    digest: str
    bytes: int
    timings: dict[str, float]
    write_gbps: float | None = None
    original: str = Field(description="what became of the original: stopped | running")


class CanaryReport(BaseModel):
    checked: bool
    match: bool | None = None
    expected: Any = None
    got: Any = None
    differences: list[str] = Field(default_factory=list)
    http_requests: int = Field(default=0, description="HTTP canary requests the copy answered as the original did")


class RestoreResult(BaseModel):
    worker: Worker
    artifact: str
    artifact_id: str
    digest: str
    bytes: int
    timings: dict[str, float]
    read_gbps: float | None = None
    canary: CanaryReport


class VerifyResult(BaseModel):
    artifact: str
    artifact_id: str
    digest: str
    bytes: int
    seconds: float
    read_gbps: float | None = None


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
    gpus: list[dict[str, Any]] = Field(default_factory=list,
                                       description="thaw.cuda.GpuInfo of each GPU: index, uuid, name, memory_total, "
                                                   "memory_free, driver_version, compute_capability")
