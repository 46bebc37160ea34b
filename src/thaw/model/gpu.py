"""GPUs as data: UUIDs, a host's GPUs, the GPUs a snapshot recorded, old → new pairs, a restore's target.

No driver here (thaw.cuda reads the GPUs; the pipeline plans and runs the GPU steps):
these are the values that travel between them, the manifest, the agent's API and the
operator, each validated once where it enters.

``index`` is a CUDA ordinal *as seen by one process* (it follows ``CUDA_VISIBLE_DEVICES``);
the UUID identifies a GPU across processes and hosts, and is what the checkpoint API's
``gpuPairs`` take.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from thaw.errors import ConfigError
from thaw.gpuid import format_uuid, normalize_uuid, parse_uuid

def _uuid(value: str) -> str:
    try:
        return normalize_uuid(value)
    except ConfigError as exc:  # pydantic reports ValueErrors as validation errors naming the field
        raise ValueError(exc.message) from None


#: a GPU UUID, normalized to nvidia-smi's spelling
GpuUuid = Annotated[str, AfterValidator(_uuid)]


def parse_gpu_target(value: object) -> int | str:
    """``--gpu`` / ``RestoreRequest.gpu``: a CUDA index (``3``, ``"3"``) or a GPU UUID in any spelling.

    Parsed once, where the value enters (the CLI, the agent's request model); the result is an
    ``int`` index or a normalized UUID, so nothing downstream looks at digits again.
    """
    if isinstance(value, bool):
        raise ConfigError("gpu", f"{value!r} is neither a GPU index nor a GPU UUID")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError("gpu", f"a GPU index is >= 0, got {value}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            return normalize_uuid(text)
        except ConfigError:
            raise ConfigError("gpu", f"{value!r} is neither a GPU index nor a GPU UUID",
                              hint="give an index (nvidia-smi -L) or a UUID like GPU-xxxxxxxx-...") from None
    raise ConfigError("gpu", f"{value!r} is neither a GPU index nor a GPU UUID")


def _target(value: object) -> int | str:
    try:
        return parse_gpu_target(value)
    except ConfigError as exc:
        raise ValueError(exc.message) from None


#: where a restore goes: a CUDA index or a normalized GPU UUID (see parse_gpu_target)
GpuTarget = Annotated[int | str, BeforeValidator(_target)]


class GpuInfo(BaseModel):
    """One GPU as a host sees it (thaw.cuda.devices(); the agent's status reports them to the operator)."""

    model_config = ConfigDict(frozen=True)

    index: int
    uuid: GpuUuid
    name: str  # e.g. "NVIDIA H200": the chip check of a restore compares this
    memory_total: int  # bytes
    memory_free: int | None = None  # bytes (NVML); None where NVML is unavailable
    driver_version: str = ""  # display driver, e.g. "580.159.04"
    compute_capability: str = ""  # e.g. "9.0"


class GpuRecord(BaseModel):
    """One GPU visible to the worker at snapshot time, as the manifest records it.

    ``used_bytes`` is the GPU memory the worker's processes held right before the lock
    (NVML); 0 for a GPU the worker could see but did not use, None where NVML could not
    tell. A restore needs that much free memory on the target GPU.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    uuid: GpuUuid
    name: str
    memory_total: int = Field(ge=0)
    used_bytes: int | None = Field(default=None, ge=0)  # a manifest is untrusted: a byte count or nothing
    compute_capability: str = ""

    @property
    def used(self) -> bool:
        return self.used_bytes is None or self.used_bytes > 0


class GpuPair(BaseModel):
    """Restore what ran on GPU ``old`` onto GPU ``new`` (UUIDs, "GPU-..." spelling)."""

    model_config = ConfigDict(frozen=True)

    old: GpuUuid
    new: GpuUuid

    def __init__(self, old: str, new: str) -> None:  # GpuPair(old, new): a pair reads best positionally
        super().__init__(old=old, new=new)


__all__ = [
    "GpuInfo",
    "GpuPair",
    "GpuRecord",
    "GpuTarget",
    "GpuUuid",
    "format_uuid",
    "normalize_uuid",
    "parse_gpu_target",
    "parse_uuid",
]
