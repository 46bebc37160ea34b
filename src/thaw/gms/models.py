"""The GMS's typed messages: what a weight set is asked for as, how it lies in memory, what the service holds.

A *weight set* is the bytes of some safetensors files, placed in GPU memory tensor by
tensor in an order the client asks for (so that, e.g., q/k/v of a layer lie back to
back and one fused matrix can view them). Two things identify it:

* ``digest`` — the content: the two-level xxh3 digests of its files (the same digest the
  artifact store computes for a file), combined in order. Equal digests, equal bytes.
* ``key`` — the content *and* the placement: ``digest`` plus the tensor order and
  alignment. Two workers asking for the same key map one copy.

Everything here is validated on receipt (pydantic, ``extra="forbid"``): a request
comes from a worker, a reply from another process, and neither is trusted.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: dtypes the loader understands (safetensors' spelling) and their sizes in bytes
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

MAX_FILES = 4096
MAX_TENSORS = 200_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeightFile(_Model):
    """One safetensors file of a set: where it is, how big, and (once read) its content digest."""

    path: str
    size: int = Field(ge=0)
    digest: str | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "\0" in value or "\n" in value:
            raise ValueError(f"a weight file is named by an absolute path without NUL or newline, got {value!r}")
        return os.path.normpath(value)


class WeightSpec(_Model):
    """What a client asks for: these files, tensors placed in this order, at this alignment.

    ``order`` names tensors to place first, in that order; the rest follow in file order.
    ``digest`` (and the files' digests), when given, must match what is read, or the
    request is refused before anything is mapped.
    """

    files: list[WeightFile] = Field(min_length=1, max_length=MAX_FILES)
    order: list[str] = Field(default_factory=list, max_length=MAX_TENSORS)
    align: int = Field(default=256, ge=1, le=1 << 21)
    digest: str | None = None

    @field_validator("align")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"align must be a power of two, got {value}")
        return value

    def placement(self) -> str:
        """The placement part of the key (order and alignment), as text."""
        return f"align={self.align};order={','.join(self.order)}"


class TensorSlot(_Model):
    """One tensor of a resident set: its bytes start ``offset`` bytes into the set's memory."""

    name: str
    dtype: str
    shape: list[int]
    offset: int = Field(ge=0)
    nbytes: int = Field(ge=0)

    @field_validator("dtype")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in DTYPE_SIZES:
            raise ValueError(f"unknown dtype {value!r}")
        return value


class Layout(_Model):
    """A resident set as a client maps it: chunk sizes (mapped back to back from offset 0) and tensor slots."""

    key: str
    digest: str
    device: str  # the GPU's UUID ("GPU-...") or a stand-in's name ("memfd:...")
    files: list[WeightFile]
    tensors: list[TensorSlot]
    nbytes: int = Field(ge=0)  # bytes the tensors span (the chunks cover at least this)
    chunks: list[int] = Field(min_length=1)
    spec: WeightSpec

    @property
    def reserved(self) -> int:
        return sum(self.chunks)

    def tensor(self, name: str) -> TensorSlot:
        for slot in self.tensors:
            if slot.name == name:
                return slot
        raise KeyError(name)


class LoadReport(_Model):
    """How a set was filled: bytes, seconds, rate, and how the files were read."""

    bytes: int
    seconds: float
    gbps: float
    io: Literal["buffered", "direct", "mixed"]
    threads: int
    read_seconds: float = 0.0  # summed over reader threads
    hash_seconds: float = 0.0
    copy_wait_seconds: float = 0.0
    page_cache_fraction: float | None = None  # of the files' pages resident before the load


class SetStatus(_Model):
    """A set as the service holds it."""

    key: str | None  # None while its first load is still reading (the digest is not known yet)
    digest: str | None
    state: Literal["loading", "ready", "failed"]
    bytes: int
    holders: int
    files: list[str]
    load: LoadReport | None = None
    error: str | None = None
    last_used: float = 0.0


class ServiceStatus(_Model):
    device: str
    pid: int
    budget_bytes: int
    resident_bytes: int
    free_bytes: int | None
    sets: list[SetStatus]


class Request(_Model):
    """One request frame. ``acquire`` keeps the set held until the connection closes (or ``release``)."""

    op: Literal["acquire", "prefetch", "release", "status", "evict"]
    spec: WeightSpec | None = None
    key: str | None = None
    wait: bool = True  # prefetch: False returns at once, True when the set is resident


#: the worker hook that maps and unmaps sets (thaw.memory.weights); its freeze report is a FrozenWeights
WEIGHTS_HOOK = "thaw.memory.weights"


class MappedSet(_Model):
    """A set as a worker had it mapped when it froze: what its snapshot records (the worker's word, validated)."""

    key: str
    digest: str
    bytes: int = Field(ge=0)
    reserved: int = Field(ge=0)
    va: int = Field(ge=0)
    device: str
    read_only: bool
    spec: WeightSpec


class FrozenWeights(_Model):
    """The weights hook's freeze report."""

    sets: list[MappedSet] = Field(default_factory=list)
    bytes: int = 0
    unmap_seconds: float = 0.0
    seconds: float = 0.0  # added by the hook runner


class ErrorBody(_Model):
    code: str
    message: str
    hint: str | None = None


class Reply(_Model):
    ok: bool
    error: ErrorBody | None = None
    layout: Layout | None = None
    set: SetStatus | None = None
    status: ServiceStatus | None = None
