"""The artifact manifest: what a snapshot holds, where it came from, and how to check it.

Versioned (``schema_version``) and validated on read; a reader refuses a schema it
does not know rather than guess. Every file of the artifact is listed with its size
and SHA-256 digest, also per chunk, so that stores can check chunks on the fly while
they move them in parallel.

A manifest comes from the store, and whoever can write the store may have crafted it:
``parse`` refuses anything that could steer a reader outside the artifact (absolute
paths, ``..``, control characters, duplicates) or let bytes pass unchecked (a chunk
list that does not cover the file), before any store acts on it.

The artifact's digest (``Manifest.digest``) is the SHA-256 of the canonical JSON of the
whole manifest except its signature: the canary, name, id, timings, sandbox layout and
GPUs are covered as well as every file (through the file digests, which cover every
chunk). Changing any of it changes the digest, which is what a signature signs and what
``thaw restore NAME@DIGEST`` pins (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, UTC
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thaw.errors import ConfigError, IntegrityError
from thaw.model.gpu import GpuRecord
from thaw.model.sandbox import SandboxRecord

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
DIGEST_ALGORITHM: Final = "sha256"
CHUNK_SIZE = 64 << 20  # per-chunk digests at this granularity: the unit of parallel transfer
#: bounds a manifest may not leave: each reader holds one chunk per thread in memory
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 64 << 10, 256 << 20
MAX_FILE_SIZE = 1 << 44
#: a manifest larger than this is refused before it is parsed (a 10 TiB artifact needs ~12 MiB)
MAX_MANIFEST_BYTES = 64 << 20
MAX_PATH_BYTES, MAX_COMPONENT_BYTES, MAX_DEPTH = 1024, 255, 16

#: artifact and worker names: 1-128 of a-z 0-9 . _ - , starting with a letter or digit, no '..'
NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE_DIGEST = re.compile(rf"{DIGEST_ALGORITHM}:[0-9a-f]{{64}}")
_ARTIFACT_ID = re.compile(r"[0-9a-f]{32}")


def check_name(name: str, *, what: str = "artifact name") -> str:
    """Return ``name`` if it is a safe artifact name, else raise ConfigError saying why."""
    # fullmatch, not match with '$': '$' also matches before a trailing newline
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            what,
            f"{_quote(name)} is not a valid name",
            hint="use 1-128 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, "
            "without '..' or '/'",
        )
    return name


def check_digest(digest: str) -> str:
    """Return ``digest`` if it has the form of an artifact digest (``sha256:<64 hex>``), else raise ConfigError."""
    if not isinstance(digest, str) or not _FILE_DIGEST.fullmatch(digest):
        raise ConfigError("digest", f"{_quote(digest)} is not an artifact digest",
                          hint=f"expected {DIGEST_ALGORITHM}:<64 hex digits>, "
                               "as `thaw inspect` or `thaw ls --json` show")
    return digest


def parse_reference(ref: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@sha256:HEX`` -> (name, expected digest or None), both checked."""
    name, at, digest = ref.partition("@")
    return check_name(name), (check_digest(digest) if at else None)


def check_path(path: str) -> str:
    """Return ``path`` if it names a file inside an artifact, else raise ValueError saying why.

    Relative, '/'-separated, normalised (no empty, '.' or '..' component), printable, of bounded
    length, and not the manifest itself: such a path can only name a file below the artifact's
    directory, whatever that directory holds.
    """
    if check_relative(path) == MANIFEST:
        raise ValueError(f"{MANIFEST} is the manifest itself, not a file of the artifact")
    return path


def check_relative(path: str) -> str:
    """``check_path`` without the manifest rule: any path that stays below a directory."""
    if not isinstance(path, str) or not path:
        raise ValueError("a file path must be a non-empty string")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path):
        raise ValueError(f"file path {_quote(path)} contains a control character")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"file path {_quote(path)} is not valid UTF-8") from None
    if path.startswith("/"):
        raise ValueError(f"file path {_quote(path)} is absolute: it must be relative to the artifact")
    parts = path.split("/")
    if ".." in parts:
        raise ValueError(f"file path {_quote(path)} leaves the artifact ('..')")
    if any(p in ("", ".") for p in parts):
        raise ValueError(f"file path {_quote(path)} is not normalised (empty or '.' component)")
    if size > MAX_PATH_BYTES or len(parts) > MAX_DEPTH or any(len(p.encode()) > MAX_COMPONENT_BYTES for p in parts):
        raise ValueError(f"file path {_quote(path)} is too long or too deep")
    return path


def file_digest(size: int, chunks: list[str]) -> str:
    """The digest of a whole file from its size and its chunks' digests (a two-level hash)."""
    h = hashlib.sha256(f"{size}\n".encode())
    for c in chunks:
        h.update(bytes.fromhex(c))
    return f"{DIGEST_ALGORITHM}:{h.hexdigest()}"


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def _quote(value: object, limit: int = 120) -> str:
    # repr() escapes control characters (no terminal escapes reach a user's screen) and quotes the value
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _Strict(BaseModel):
    # everything in a manifest is covered by its digest: an unknown field is refused, not silently dropped
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FileEntry(_Strict):
    model_config = ConfigDict(frozen=True)

    path: str  # relative to the artifact directory, '/'-separated (check_path)
    size: int = Field(ge=0, le=MAX_FILE_SIZE)
    digest: str  # "sha256:<hex>" over the size and the chunk digests (file_digest)
    chunks: list[str] = Field(default_factory=list)  # hex SHA-256 of each chunk_size piece

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_path(v)

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        if not _FILE_DIGEST.fullmatch(v):
            raise ValueError(f"{_quote(v)} is not a {DIGEST_ALGORITHM} file digest")
        return v

    @field_validator("chunks")
    @classmethod
    def _chunks(cls, v: list[str]) -> list[str]:
        if not all(isinstance(c, str) and _HEX64.fullmatch(c) for c in v):
            raise ValueError(f"chunk digests must be {DIGEST_ALGORITHM} hex digests")
        return v


class SourceInfo(_Strict):
    host: str
    kernel: str
    criu_version: str = ""
    thaw_version: str = ""
    cuda_driver: str = ""


class HttpCanaryRequest(BaseModel):
    """One request of an HTTP canary (``--canary-http``): sent to the original after the snapshot and to every
    restored copy before it counts as ready. ``compare`` names the parts of the JSON answer that must be
    equal (dotted paths such as ``choices.0.text``); empty: the whole answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["GET", "POST"] = "POST"
    path: str = Field(pattern=r"^/[!-~]*$", max_length=2048,
                      description="absolute path and query, e.g. /v1/completions")
    body: Any = Field(default=None, description="JSON body (POST)")
    compare: list[str] = Field(default_factory=list, max_length=32)
    timeout_s: float = Field(default=60.0, gt=0, le=600)

    @classmethod
    def of(cls, raw: dict[str, Any]) -> HttpCanaryRequest:
        """A request from its JSON form: ``{"method", "path", "body", "compare", "timeout_s"}``, or OpenAI-style
        ``{"prompt": ...}`` (``POST /v1/completions``) / ``{"messages": ...}`` (``POST /v1/chat/completions``),
        which get ``temperature: 0`` unless they set it and compare the answer's ``choices`` (its ids and
        timestamps differ on every answer). Raises ValueError (pydantic's ValidationError is one)."""
        if "path" in raw or "method" in raw:
            return cls.model_validate(raw)
        if "prompt" in raw or "messages" in raw:
            body = dict(raw)
            extra = {k: body.pop(k) for k in ("compare", "timeout_s") if k in body}
            body.setdefault("temperature", 0)
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            return cls.model_validate({"path": path, "body": body, "compare": ["choices"], **extra})
        raise ValueError('a request needs "path" (any request) or "prompt" / "messages" (an OpenAI-style one)')


class HttpExchange(_Strict):
    request: HttpCanaryRequest
    status: int
    answer: Any = None  # the compared part of the answer, as the original gave it


class HttpCanary(_Strict):
    """What the original answered to the HTTP canary, and where it serves (``tcp://…`` or ``unix://…``)."""

    serves: str
    exchanges: list[HttpExchange]


class WorkerInfo(_Strict):
    name: str
    argv: list[str] = Field(default_factory=list)
    pid: int = 0  # host pid at snapshot time
    canary: Any = None  # the canary outputs recorded at quiesce time
    hooks: list[str] = Field(default_factory=list)
    freeze_report: dict[str, Any] = Field(default_factory=dict)  # what the freeze hooks reported
    serves: str | None = None  # where the worker said it would serve (quiesce(serves=...), --park-at-listen)
    http_canary: HttpCanary | None = None  # --canary-http: replayed against every restored copy


class ReleasedMemory(_Strict):
    tag: str
    bytes: int


class WeightFileRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str  # absolute, on every node that restores (a model volume, like the worker's libraries)
    size: int
    digest: str  # the store's two-level file digest

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        # outside the artifact by design (the node's model volume, checked against ``digest`` when loaded),
        # but absolute and normalised: a manifest never steers it with '..' or control characters
        if not v.startswith("/"):
            raise ValueError(f"weight file {_quote(v)} must be an absolute path")
        check_relative(v[1:])
        return v


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


class Signature(_Strict):
    """An ed25519 signature of the artifact digest (thaw.store.signing), by the key ``key_id`` names."""

    model_config = ConfigDict(frozen=True)

    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    value: str = Field(pattern=r"^[A-Za-z0-9+/=]{1,128}$")  # base64


class Manifest(_Strict):
    """The manifest of one artifact. Written last: an artifact without one is not an artifact."""

    schema_version: int = SCHEMA_VERSION
    artifact_id: str
    name: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: SourceInfo
    worker: WorkerInfo
    sandbox: SandboxRecord = Field(default_factory=SandboxRecord)  # what a restore must rebuild
    gpus: list[GpuRecord] = Field(default_factory=list)  # every GPU the worker saw, and what it used on each
    #: the processes whose GPU state the images hold, by their pid inside the sandbox (CRIU restores the
    #: same pids there); empty with ``gpus`` set: the root alone (artifacts taken before this was recorded)
    gpu_pids: list[int] = Field(default_factory=list)
    memory_released: list[ReleasedMemory] = Field(default_factory=list)
    weights: list[WeightSetRef] = Field(default_factory=list)
    #: the worker's host memory by kind before the GPU lock and after the checkpoint (pipeline/residual.py)
    residual: MemoryResidual | None = None
    digest_algorithm: Literal["sha256"] = DIGEST_ALGORITHM
    chunk_size: int = Field(default=CHUNK_SIZE, ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)
    files: list[FileEntry] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    #: over ``digest``; the only field the digest leaves out
    signature: Signature | None = None

    @field_validator("artifact_id")
    @classmethod
    def _artifact_id(cls, v: str) -> str:
        # names the artifact's data in object stores (<name>/<artifact_id>/...): never a path of any kind
        if v and not _ARTIFACT_ID.fullmatch(v):
            raise ValueError(f"artifact_id {_quote(v)} is not 32 hex digits")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return check_name(v)
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _files_consistent(self) -> Manifest:
        seen: set[str] = set()
        dirs: set[str] = set()
        for entry in self.files:
            if entry.path in seen:
                raise ValueError(f"file {_quote(entry.path)} is listed twice")
            seen.add(entry.path)
            parts = entry.path.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            want = chunk_count(entry.size, self.chunk_size)
            if len(entry.chunks) != want:
                raise ValueError(f"file {_quote(entry.path)} has {entry.size} bytes, which need {want} chunk "
                                 f"digest(s) of {self.chunk_size} bytes, but {len(entry.chunks)} are listed")
            if file_digest(entry.size, entry.chunks) != entry.digest:
                raise ValueError(f"the chunk digests of {_quote(entry.path)} do not match its file digest")
        if clash := sorted(seen & dirs):
            raise ValueError(f"{_quote(clash[0])} is listed as a file and used as a directory")
        return self

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def canonical(self) -> bytes:
        """The bytes the digest covers: every field but the signature, as sorted, compact JSON."""
        data = self.model_dump(mode="json", exclude={"signature"})
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @property
    def digest(self) -> str:
        """One digest for the whole artifact: the manifest (everything but its signature) and so every file."""
        return f"{DIGEST_ALGORITHM}:{hashlib.sha256(self.canonical()).hexdigest()}"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def parse(cls, text: str | bytes, *, where: str = "manifest", name: str | None = None) -> Manifest:
        """Validate a manifest; refuse unknown schemas and malformed content with IntegrityError.

        ``name`` is the name the manifest was found under: a manifest that names another
        artifact (a renamed or copied artifact) is refused, so that a signed artifact cannot
        be replayed under a name it was not signed for.
        """
        if len(text) > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes: not a thaw manifest", path=where)
        try:
            raw = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(f"{where} is not valid JSON: {_quote(str(exc), 200)}", path=where) from None
        try:  # JSON's \ud800 escapes decode to lone surrogates: text no file, log or reply can hold
            json.dumps(raw, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise IntegrityError(f"{where} holds a string that is not valid Unicode (a lone surrogate escape)",
                                 path=where) from None
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if version != SCHEMA_VERSION:
            raise IntegrityError(
                f"{where} has schema version {_quote(version, 40)}; this thaw reads version {SCHEMA_VERSION} only "
                "(upgrade thaw, or take a new snapshot)",
                path=where,
            )
        try:
            manifest = cls.model_validate(raw)
        except ValidationError as exc:
            raise IntegrityError(f"{where} is malformed: {_summary(exc)}", path=where) from None
        except RecursionError:
            raise IntegrityError(f"{where} is malformed: nested too deeply", path=where) from None
        if not manifest.artifact_id or not manifest.files:
            raise IntegrityError(f"{where} is malformed: " + ("no artifact_id" if not manifest.artifact_id
                                                              else "it lists no files"), path=where)
        if name is not None and manifest.name != name:
            raise IntegrityError(
                f"{where} belongs to artifact {manifest.name!r}, but was found under {name!r}: artifacts cannot be "
                "renamed or copied to another name (the name is part of the signed digest)",
                path=where, hint=f"restore it under its own name, or `thaw rm {name}` and take a new snapshot")
        return manifest


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_quote(key, 60)}")
        out[key] = value
    return out


def _summary(exc: ValidationError, limit: int = 3) -> str:
    """Where and what, without echoing whole hostile inputs back."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in errors[:limit]]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more
