"""Weights from the GPU memory service, mapped into this worker and out of its snapshots.

::

    import thaw.memory.weights as weights

    ws = weights.load(["/models/q8b/model-00001-of-00004.safetensors", ...],
                      order=["model.layers.0.self_attn.q_proj.weight", ...])   # optional placement
    w = ws.tensor("model.embed_tokens.weight")        # a torch tensor over GMS memory (read-only)

The service (thaw.gms) loads the files once per node and GPU; every worker that asks for
the same files and placement maps the same physical memory. The worker reserves one
address range per set and maps the service's chunks into it, read-only.

Ordering (probe, second run, driver 580): a process that still maps imported memory
checkpoints "fine" but its CUDA restore fails with 801, then 304, and it stays stuck.
So the freeze hook unmaps every set, releases the imported handles and closes the
connection — keeping the address reservation — before the GPU lock; the thaw hook asks
the service of the GPU the worker now runs on (after a restore onto another GPU,
another service) for the same set by digest, and maps it at the same addresses, so
tensors and captured CUDA graphs that point there stay valid. While a set is mapped it is
declared imported (thaw.cuda.worker_hooks), and a snapshot refuses a worker that still
declares any.

Where there is no GPU, ``device="memfd:NAME"`` maps a memfd stand-in service the same way
(CI runs the whole cycle with real CRIU on it).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import thaw.worker
from thaw.cuda import worker_hooks
from thaw.errors import ConfigError, CudaError, GmsError
from thaw.gms import Client, Layout, WeightSpec, libc, wire
from thaw.gms.models import WEIGHTS_HOOK, FrozenWeights, MappedSet
from thaw.gms.plan import describe

#: one name for freeze and thaw (thaw.worker undoes a completed freeze hook with the thaw hook of its name)
HOOK = WEIGHTS_HOOK
ENV_GMS_DIR = "THAW_GMS_DIR"
DEFAULT_GMS_DIR = Path("/var/lib/thaw/gms")

_TORCH_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                 "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


class Importer(Protocol):
    """Maps another process's memory into this one at fixed addresses (CUDA VMM, or memfds)."""

    device: str | int

    def identity(self) -> str:
        """The device as the service names it *now* (after a restore onto another GPU, the new one)."""
        ...

    def reserve(self, size: int) -> int: ...

    def map(self, va: int, size: int, fd: int, *, read_only: bool) -> int:
        """Import ``fd`` and map it at ``va``; returns the handle. The fd is consumed."""
        ...

    def protect(self, va: int, size: int, *, read_only: bool) -> bool:
        """Grant this device access to the mapped range; False when read-only is not supported (then read-write)."""
        ...

    def unmap(self, va: int, size: int, handle: int) -> None: ...

    def synchronize(self) -> None: ...


class CudaImporter:
    def __init__(self, device: int) -> None:
        from thaw.memory.driver import CudaDriver

        self.device = device
        self.driver = CudaDriver()

    def identity(self) -> str:
        from thaw.cuda.gpus import device_uuid

        return device_uuid(self.device)

    def reserve(self, size: int) -> int:
        return self.driver.reserve(self.device, size)

    def map(self, va: int, size: int, fd: int, *, read_only: bool) -> int:
        try:
            handle = self.driver.import_shareable(self.device, fd)
        finally:
            os.close(fd)  # the imported handle holds the memory; the fd is no longer needed
        try:
            self.driver.map(self.device, va, size, handle)
        except BaseException:
            self.driver.release(self.device, handle)
            raise
        return handle

    def protect(self, va: int, size: int, *, read_only: bool) -> bool:
        if read_only:
            try:
                self.driver.set_access(self.device, va, size, read_only=True)
                return True
            except CudaError:
                pass  # a platform without read-only device mappings: fall back to read-write
        self.driver.set_access(self.device, va, size)
        return False

    def unmap(self, va: int, size: int, handle: int) -> None:
        self.driver.unmap(self.device, va, size)
        self.driver.release(self.device, handle)

    def synchronize(self) -> None:
        self.driver.synchronize(self.device)


class MemfdImporter:
    """The CPU stand-in: memfds mapped with mmap(MAP_FIXED) into an address reservation."""

    def __init__(self, name: str) -> None:
        self.device = f"memfd:{name}"
        self._fds: dict[int, int] = {}

    def identity(self) -> str:
        return str(self.device)

    def reserve(self, size: int) -> int:
        return libc.reserve(size)

    def map(self, va: int, size: int, fd: int, *, read_only: bool) -> int:
        try:
            libc.map_shared(va, size, fd, writable=not read_only)
        except BaseException:
            os.close(fd)
            raise
        self._fds[va] = fd
        return fd

    def protect(self, va: int, size: int, *, read_only: bool) -> bool:
        return read_only  # mapped with the right protection already

    def unmap(self, va: int, size: int, handle: int) -> None:
        libc.unreserve_range(va, size)  # the reservation stays, as cuMemUnmap keeps a VA range reserved
        self._fds.pop(va, None)
        os.close(handle)

    def synchronize(self) -> None:
        return None


class WeightSet:
    """One weight set mapped into this process at a fixed address range."""

    def __init__(self, layout: Layout, importer: Importer, gms_dir: Path, *, read_only: bool = True) -> None:
        self.layout = layout
        self.importer = importer
        self.gms_dir = gms_dir
        self.read_only = read_only
        self.va = importer.reserve(layout.reserved)
        self.reserved = layout.reserved
        self.handles: list[tuple[int, int, int]] = []  # (va, size, handle) of mapped chunks
        self.client: Client | None = None
        self.read_only_granted = False
        self._tensors: dict[str, Any] = {}

    @property
    def mapped(self) -> bool:
        return bool(self.handles)

    @property
    def nbytes(self) -> int:
        return self.layout.nbytes

    def map(self, layout: Layout, fds: list[int], client: Client) -> None:
        if layout.device != self.importer.identity():
            wire.close_all(fds)
            raise GmsError(f"the service at {client.path} serves {layout.device}, this worker runs on "
                           f"{self.importer.identity()}", code="wrong_device")
        if layout.key != self.layout.key:
            wire.close_all(fds)
            raise GmsError(f"the service offers weight set {layout.key}, this worker mapped {self.layout.key}",
                           code="integrity")
        if layout.reserved > self.reserved:
            wire.close_all(fds)
            raise GmsError(f"the service's chunks need {layout.reserved} bytes of addresses, "
                           f"{self.reserved} are reserved", code="layout")
        offset, pending = 0, list(fds)
        try:
            for size in layout.chunks:
                fd = pending.pop(0)
                self.handles.append((self.va + offset, size, self.importer.map(self.va + offset, size, fd,
                                                                               read_only=self.read_only)))
                offset += size
            self.read_only_granted = self.importer.protect(self.va, offset, read_only=self.read_only)
        except BaseException:
            wire.close_all(pending)
            self._unmap_all(quiet=True)
            raise
        self.layout, self.client = layout, client
        worker_hooks.declare_imported(self._name, layout.reserved)

    def unmap(self) -> None:
        """Unmap and release every chunk (the address range stays reserved) and close the connection."""
        if self.handles:
            self.importer.synchronize()
        self._unmap_all(quiet=False)
        if self.client is not None:
            self.client.close()
            self.client = None
        worker_hooks.forget_imported(self._name)

    def tensor(self, name: str) -> Any:
        """The tensor ``name`` as a torch tensor over the mapped memory (CUDA, or CPU for the memfd stand-in)."""
        if name not in self._tensors:
            slot = self.layout.tensor(name)
            self._tensors[name] = self.view(slot.offset, slot.dtype, slot.shape)
        return self._tensors[name]

    def view(self, offset: int, dtype: str, shape: Sequence[int]) -> Any:
        """A torch tensor of ``shape`` and safetensors ``dtype`` over the set's memory at ``offset``."""
        import torch

        from thaw.gms.models import DTYPE_SIZES

        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * DTYPE_SIZES[dtype]
        if offset < 0 or offset + nbytes > self.layout.nbytes:
            raise ConfigError("weights", f"{nbytes} bytes at {offset} run past the set's {self.layout.nbytes}")
        torch_dtype = getattr(torch, _TORCH_DTYPES[dtype])
        if nbytes == 0:
            return torch.empty(list(shape), dtype=torch_dtype)
        return self._raw(self.va + offset, nbytes, torch).view(torch_dtype).view(list(shape))

    def buffer(self, name: str) -> memoryview:
        """The bytes of tensor ``name`` (valid while mapped; touching them while unmapped faults)."""
        slot = self.layout.tensor(name)
        return memoryview((ctypes.c_char * slot.nbytes).from_address(self.va + slot.offset)).cast("B")

    def describe(self) -> MappedSet:
        """What a snapshot records: which set, from which files, where it is mapped."""
        return MappedSet(key=self.layout.key, digest=self.layout.digest, bytes=self.layout.nbytes,
                         reserved=self.reserved, va=self.va, device=self.layout.device,
                         read_only=self.read_only_granted, spec=self.layout.spec)

    @property
    def _name(self) -> str:
        return f"gms:{self.layout.key}@0x{self.va:x}"

    def _raw(self, addr: int, nbytes: int, torch: Any) -> Any:
        if isinstance(self.importer, MemfdImporter):
            buf = (ctypes.c_uint8 * nbytes).from_address(addr)
            return torch.frombuffer(buf, dtype=torch.uint8)
        from thaw.memory.tensors import wrap

        return wrap(addr, nbytes, int(self.importer.device))

    def _unmap_all(self, *, quiet: bool) -> None:
        while self.handles:
            va, size, handle = self.handles[-1]
            try:
                self.importer.unmap(va, size, handle)
            except BaseException:
                if not quiet:
                    raise
            self.handles.pop()


_sets: list[WeightSet] = []
_lock = threading.Lock()


def gms_dir_default() -> Path:
    return Path(os.environ.get(ENV_GMS_DIR) or DEFAULT_GMS_DIR)


def available(device: int | str | None = None, *, gms_dir: Path | None = None) -> bool:
    """True when a service listens for ``device`` (default: the current CUDA device)."""
    importer = _importer(device)
    try:
        ident = importer.identity()
    except (CudaError, GmsError):
        return False
    from thaw.gms import socket_path

    return socket_path(gms_dir or gms_dir_default(), ident).exists()


def load(files: Sequence[str | Path], *, order: Sequence[str] = (), align: int = 256,
         device: int | str | None = None, gms_dir: Path | None = None, read_only: bool = True) -> WeightSet:
    """Map the weight set of ``files`` (placed as ``order`` asks) from this GPU's memory service.

    ``device``: a CUDA ordinal (default: torch's current device, else 0) or "memfd:NAME".
    Raises GmsUnavailable when no service listens for the device, GmsError when it refuses.
    """
    directory = gms_dir or gms_dir_default()
    importer = _importer(device)
    spec = WeightSpec(files=describe([str(f) for f in files]), order=list(order), align=align)
    t0 = time.perf_counter()
    client = Client.for_device(directory, importer.identity())
    try:
        layout, fds = client.acquire(spec)
        ws = WeightSet(layout, importer, directory, read_only=read_only)
        ws.map(layout, fds, client)
    except BaseException:
        client.close()
        raise
    ws.load_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    with _lock:
        _sets.append(ws)
        _install_hooks()
    return ws


def loaded() -> list[WeightSet]:
    with _lock:
        return list(_sets)


def unmap_all() -> dict[str, Any]:
    """The freeze step: every set unmapped and its connection closed. Returns what the snapshot records."""
    t0 = time.perf_counter()
    out = []
    for ws in loaded():
        ws.unmap()
        out.append(ws.describe())
    report = FrozenWeights(sets=out, bytes=sum(s.bytes for s in out), unmap_seconds=round(time.perf_counter() - t0, 6))
    return report.model_dump(mode="json")


def remap_all() -> dict[str, Any]:
    """The thaw step: every set asked for again, by digest, from the service of the GPU this worker runs on now."""
    t0 = time.perf_counter()
    out = []
    for ws in loaded():
        if ws.mapped:
            continue
        t = time.perf_counter()
        spec = ws.layout.spec  # carries the digests: the service refuses other bytes before we map anything
        client = Client.for_device(ws.gms_dir, ws.importer.identity())
        try:
            layout, fds = client.acquire(spec)
            acquired = time.perf_counter() - t
            ws.map(layout, fds, client)
        except BaseException:
            client.close()
            raise
        out.append({"key": layout.key, "device": layout.device, "acquire_seconds": round(acquired, 6),
                    "map_seconds": round(time.perf_counter() - t - acquired, 6)})
    return {"sets": out, "seconds": round(time.perf_counter() - t0, 6)}


def _importer(device: int | str | None) -> Importer:
    if isinstance(device, str) and device.startswith("memfd:"):
        return MemfdImporter(device.removeprefix("memfd:"))
    if device is None:
        torch = sys.modules.get("torch")
        device = torch.cuda.current_device() if torch is not None and torch.cuda.is_initialized() else 0
    if isinstance(device, str):
        if not device.isdigit():
            raise ConfigError("device", f"a CUDA ordinal or memfd:NAME, got {device!r}")
        device = int(device)
    return CudaImporter(device)


def _install_hooks() -> None:
    def freeze(ctx: thaw.worker.HookContext) -> dict[str, Any]:
        return unmap_all()

    def thaw_(ctx: thaw.worker.HookContext) -> dict[str, Any]:
        return remap_all()

    if HOOK not in thaw.worker.hooks.registered()["freeze"]:
        thaw.worker.on_freeze(freeze, name=HOOK)
        thaw.worker.on_thaw(thaw_, name=HOOK)
