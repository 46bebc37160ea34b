"""The typed floor: the values that travel between thaw's packages, validated where they enter.

Nothing here does anything to a host, a process or a driver; every package above may
import it, and it imports only pydantic, xxhash and :mod:`thaw.errors`::

    manifest.py   Manifest (versioned; files, digests), names (check_name)
    gpu.py        GpuInfo, GpuRecord, GpuPair, GpuTarget, UUID spelling
    sandbox.py    SandboxLayout, SandboxRecord
    timing.py     Phase, Timings (a tree: ``unaccounted`` is what no phase explains)
"""

from thaw.model.gpu import (
    GpuInfo,
    GpuPair,
    GpuRecord,
    GpuTarget,
    GpuUuid,
    format_uuid,
    normalize_uuid,
    parse_gpu_target,
    parse_uuid,
)
from thaw.model.manifest import (
    CHUNK_SIZE,
    DIGEST_ALGORITHM,
    MANIFEST,
    SCHEMA_VERSION,
    FileEntry,
    Manifest,
    MemoryCensus,
    MemoryResidual,
    ReleasedMemory,
    SourceInfo,
    WeightFileRef,
    WeightSetRef,
    WorkerInfo,
    check_name,
)
from thaw.model.sandbox import NET_KEY, SandboxLayout, SandboxRecord
from thaw.model.timing import TOTAL, UNACCOUNTED, Phase, PhaseTime, Timings

__all__ = [
    "CHUNK_SIZE",
    "DIGEST_ALGORITHM",
    "MANIFEST",
    "NET_KEY",
    "SCHEMA_VERSION",
    "TOTAL",
    "UNACCOUNTED",
    "FileEntry",
    "GpuInfo",
    "GpuPair",
    "GpuRecord",
    "GpuTarget",
    "GpuUuid",
    "Manifest",
    "MemoryCensus",
    "MemoryResidual",
    "Phase",
    "PhaseTime",
    "ReleasedMemory",
    "SandboxLayout",
    "SandboxRecord",
    "SourceInfo",
    "Timings",
    "WeightFileRef",
    "WeightSetRef",
    "WorkerInfo",
    "check_name",
    "format_uuid",
    "normalize_uuid",
    "parse_gpu_target",
    "parse_uuid",
]
