"""The artifact manifest: what a snapshot holds, where it came from, and how to check it.

Versioned (``schema_version``) and validated on read; a reader refuses a schema it
does not know rather than guess. Every file of the artifact is listed with its size
and digest (xxh3-128), also per chunk, so that stores can check chunks on the fly
while they move them in parallel.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import xxhash
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thaw.errors import ConfigError, IntegrityError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DIGEST_ALGORITHM = "xxh3_128"
CHUNK_SIZE = 64 << 20  # per-chunk digests at this granularity: the unit of parallel transfer

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


def check_name(name: str, *, what: str = "artifact name") -> str:
    """Return ``name`` if it is a safe artifact name, else raise ConfigError saying why."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ConfigError(
            what,
            f"{name!r} is not a valid name",
            hint="use 1-128 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, without '..' or '/'",
        )
    return name


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str  # relative to the artifact directory, '/'-separated
    size: int
    digest: str  # "<algorithm>:<hex>" of the whole file
    chunks: list[str] = Field(default_factory=list)  # hex digests of each CHUNK_SIZE piece


class SourceInfo(BaseModel):
    host: str
    kernel: str
    criu_version: str = ""
    thaw_version: str = ""
    cuda_driver: str = ""


class WorkerInfo(BaseModel):
    name: str
    argv: list[str] = Field(default_factory=list)
    pid: int = 0  # host pid at snapshot time
    canary: Any = None  # the canary outputs recorded at quiesce time
    hooks: list[str] = Field(default_factory=list)
    freeze_report: dict[str, Any] = Field(default_factory=dict)  # what the freeze hooks reported


class ReleasedMemory(BaseModel):
    tag: str
    bytes: int


class WeightFileRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str  # absolute, on every node that restores (a model volume, like the worker's libraries)
    size: int
    digest: str  # the store's two-level file digest


class WeightSetRef(BaseModel):
    """Weights the worker mapped from the node's GPU memory service (thaw.gms): not in the image.

    A restore asks the service of the target GPU for the set with this digest and placement
    (loading it from ``files`` if it is not resident); the worker maps it again at the
    addresses it had.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str  # content + placement
    digest: str  # content: the files' digests
    bytes: int
    device: str  # the GPU ("GPU-<uuid>") or stand-in ("memfd:<name>") it was mapped from at snapshot time
    files: list[WeightFileRef]
    order: list[str] = Field(default_factory=list)
    align: int = 256


class MemoryCensus(BaseModel):
    """Bytes by kind (resident, as CRIU would write them), and the largest mappings."""

    model_config = ConfigDict(extra="forbid")

    heap: int = 0
    anonymous: int = 0
    shared_anonymous: int = 0
    file_dirty: int = 0
    device_mapped: int = 0
    stack: int = 0
    mappings: int = 0
    largest: list[tuple[str, int]] = []

    @property
    def dumped(self) -> int:
        return self.heap + self.anonymous + self.shared_anonymous + self.file_dirty + self.stack


class MemoryResidual(BaseModel):
    """The two readings and what the checkpoint added."""

    model_config = ConfigDict(extra="forbid")

    before_lock: MemoryCensus
    after_checkpoint: MemoryCensus | None = None

    @property
    def cuda_host_copy(self) -> int:
        if self.after_checkpoint is None:
            return 0
        return max(0, self.after_checkpoint.dumped - self.before_lock.dumped)

    def summary(self) -> dict[str, int]:
        """Bytes the image holds by kind: the process's own memory before the lock, plus the host copy."""
        b = self.before_lock
        return {"cuda_host_copy": self.cuda_host_copy, "heap": b.heap, "anonymous": b.anonymous,
                "shared_anonymous": b.shared_anonymous, "file_dirty": b.file_dirty, "stack": b.stack,
                "device_mapped_before_lock": b.device_mapped}


class Manifest(BaseModel):
    """The manifest of one artifact. Written last: an artifact without one is not an artifact."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    artifact_id: str
    name: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    source: SourceInfo
    worker: WorkerInfo
    sandbox: dict[str, Any] = Field(default_factory=dict)  # the layout restore must rebuild (sandbox.Layout)
    gpus: list[dict[str, Any]] = Field(default_factory=list)  # one record per GPU the worker used
    memory_released: list[ReleasedMemory] = Field(default_factory=list)
    weights: list[WeightSetRef] = Field(default_factory=list)
    #: the worker's host memory by kind before the GPU lock and after the checkpoint (pipeline/residual.py)
    residual: MemoryResidual | None = None
    digest_algorithm: str = DIGEST_ALGORITHM
    chunk_size: int = CHUNK_SIZE
    files: list[FileEntry] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """One digest for the whole artifact: over the file list (paths, sizes, digests)."""
        h = xxhash.xxh3_128()
        for f in sorted(self.files, key=lambda f: f.path):
            h.update(f"{f.path}\0{f.size}\0{f.digest}\n".encode())
        return f"{DIGEST_ALGORITHM}:{h.hexdigest()}"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def write(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(self.to_json())

    @classmethod
    def parse(cls, text: str | bytes, *, where: str = "manifest") -> Manifest:
        """Validate a manifest; refuse unknown schemas and malformed content with IntegrityError."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise IntegrityError(f"{where} is not valid JSON: {exc}", path=where) from exc
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if version != SCHEMA_VERSION:
            raise IntegrityError(
                f"{where} has schema version {version!r}; this thaw reads version {SCHEMA_VERSION} only "
                "(upgrade thaw, or take a new snapshot)",
                path=where,
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise IntegrityError(f"{where} is malformed: {exc}", path=where) from exc

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = Path(directory) / MANIFEST
        try:
            text = path.read_bytes()
        except FileNotFoundError as exc:
            raise IntegrityError(f"{path} is missing: not a complete artifact", path=path) from exc
        return cls.parse(text, where=str(path))
