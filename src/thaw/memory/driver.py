"""The seam between the pool's policy (pool.py) and the CUDA driver: map, unmap, copy, fill.

:class:`Driver` is what the pool needs, nothing more; :class:`CudaDriver` implements it
with ctypes on libcuda (declarations in :mod:`thaw.cuda.native`), and
:class:`thaw.memory.testing.FakeDriver` implements it on host memory so the pool's
policy and rollback run in CPU tests.

Every method takes the CUDA device ordinal first. :class:`CudaDriver` makes that
device's *primary* context current around each call: the VMM calls need a current
context, the thread that runs a freeze hook or a torch free may have none, and the
primary context is the one torch already uses (retaining it costs no GPU memory).
Failures raise :class:`thaw.errors.CudaError` naming the driver call.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from thaw.cuda import native
from thaw.errors import CudaError


class Driver(Protocol):
    """What the pool asks of the GPU. Sizes and addresses are bytes; handles are opaque ints."""

    def granularity(self, device: int) -> int:
        """The allocation granularity (sizes and addresses are multiples of it)."""
        ...

    def reserve(self, device: int, size: int) -> int:
        """Reserve ``size`` bytes of virtual address space; return its start."""
        ...

    def free_reservation(self, device: int, va: int, size: int) -> None: ...

    def create(self, device: int, size: int) -> int:
        """Create ``size`` bytes of physical memory on ``device``; return its handle."""
        ...

    def map(self, device: int, va: int, size: int, handle: int) -> None: ...

    def set_access(self, device: int, va: int, size: int) -> None:
        """Allow ``device`` to read and write the mapped range."""
        ...

    def unmap(self, device: int, va: int, size: int) -> None: ...

    def release(self, device: int, handle: int) -> None:
        """Drop the physical memory behind ``handle`` (once it is unmapped everywhere)."""
        ...

    def synchronize(self, device: int) -> None:
        """Wait until no GPU work of this process runs on ``device``."""
        ...

    def copy_to_host(self, device: int, va: int, dst: bytearray) -> None: ...

    def copy_from_host(self, device: int, va: int, src: bytearray) -> None: ...

    def fill32(self, device: int, va: int, size: int, pattern: int) -> None:
        """Write the 32-bit ``pattern`` over ``size`` bytes (a multiple of 4) at ``va``."""
        ...


class CudaDriver:
    """:class:`Driver` on the real libcuda (ctypes)."""

    def __init__(self) -> None:
        self._contexts: dict[int, ctypes.c_void_p] = {}
        self._granularity: dict[int, int] = {}
        self._lock = threading.Lock()

    def granularity(self, device: int) -> int:
        if device not in self._granularity:
            size = ctypes.c_size_t(0)
            prop = self._prop(device)
            with self._on(device):
                # RECOMMENDED, as the probe used (2 MiB on the H200); MINIMUM is the same there
                native.cuda_call("cuMemGetAllocationGranularity", ctypes.byref(size), ctypes.byref(prop),
                                 native.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED)
            self._granularity[device] = int(size.value)
        return self._granularity[device]

    def reserve(self, device: int, size: int) -> int:
        va = native.CUdeviceptr(0)
        with self._on(device):
            native.cuda_call("cuMemAddressReserve", ctypes.byref(va), size, 0, 0, 0)
        return int(va.value)

    def free_reservation(self, device: int, va: int, size: int) -> None:
        with self._on(device):
            native.cuda_call("cuMemAddressFree", va, size)

    def create(self, device: int, size: int) -> int:
        handle = native.CUmemGenericAllocationHandle(0)
        prop = self._prop(device)
        with self._on(device):
            native.cuda_call("cuMemCreate", ctypes.byref(handle), size, ctypes.byref(prop), 0)
        return int(handle.value)

    def map(self, device: int, va: int, size: int, handle: int) -> None:
        with self._on(device):
            native.cuda_call("cuMemMap", va, size, 0, handle, 0)

    def set_access(self, device: int, va: int, size: int, *, read_only: bool = False) -> None:
        desc = native.CUmemAccessDesc()
        desc.location.type = native.CU_MEM_LOCATION_TYPE_DEVICE
        desc.location.id = device
        desc.flags = native.CU_MEM_ACCESS_FLAGS_PROT_READ if read_only else native.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        with self._on(device):
            native.cuda_call("cuMemSetAccess", va, size, ctypes.byref(desc), 1)

    def import_shareable(self, device: int, fd: int) -> int:
        """The handle of physical memory another process exported as POSIX fd ``fd`` (the fd may be closed after)."""
        handle = native.CUmemGenericAllocationHandle(0)
        with self._on(device):
            # cuda.h: the fd travels as the *value* of the void* osHandle argument
            native.cuda_call("cuMemImportFromShareableHandle", ctypes.byref(handle), ctypes.c_void_p(fd),
                             native.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return int(handle.value)

    def unmap(self, device: int, va: int, size: int) -> None:
        with self._on(device):
            native.cuda_call("cuMemUnmap", va, size)

    def release(self, device: int, handle: int) -> None:
        with self._on(device):
            native.cuda_call("cuMemRelease", handle)

    def synchronize(self, device: int) -> None:
        with self._on(device):
            native.cuda_call("cuCtxSynchronize")

    def copy_to_host(self, device: int, va: int, dst: bytearray) -> None:
        if not dst:
            return
        view = (ctypes.c_char * len(dst)).from_buffer(dst)
        with self._on(device):
            # cuMemcpyDtoH is synchronous for pageable host memory: the bytes are there on return
            native.cuda_call("cuMemcpyDtoH_v2", ctypes.addressof(view), va, len(dst))

    def copy_from_host(self, device: int, va: int, src: bytearray) -> None:
        if not src:
            return
        view = (ctypes.c_char * len(src)).from_buffer(src)
        with self._on(device):
            native.cuda_call("cuMemcpyHtoD_v2", va, ctypes.addressof(view), len(src))
            native.cuda_call("cuCtxSynchronize")

    def fill32(self, device: int, va: int, size: int, pattern: int) -> None:
        with self._on(device):
            native.cuda_call("cuMemsetD32_v2", va, pattern & 0xFFFFFFFF, size // 4)
            native.cuda_call("cuCtxSynchronize")  # memset may return before it is done

    # --- internals ---------------------------------------------------------------------------

    @staticmethod
    def _prop(device: int) -> native.CUmemAllocationProp:
        prop = native.CUmemAllocationProp()
        prop.type = native.CU_MEM_ALLOCATION_TYPE_PINNED
        # no shareable handle type: the pool's memory is private to the process, the only kind
        # the driver checkpoint restores (probe: imported memory leaves a restore stuck)
        prop.requestedHandleTypes = native.CU_MEM_HANDLE_TYPE_NONE
        prop.location.type = native.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = device
        return prop

    def _context(self, device: int) -> ctypes.c_void_p:
        with self._lock:
            if device not in self._contexts:
                ctx = ctypes.c_void_p()
                dev = ctypes.c_int(0)
                native.cuda_call("cuDeviceGet", ctypes.byref(dev), device)
                native.cuda_call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
                self._contexts[device] = ctx  # retained for the life of the process, like torch's
            return self._contexts[device]

    @contextmanager
    def _on(self, device: int) -> Iterator[None]:
        native.cuda_call("cuCtxPushCurrent_v2", self._context(device))
        try:
            yield
        except BaseException:
            self._pop(quiet=True)  # the call's own error is the one to report
            raise
        self._pop(quiet=False)

    @staticmethod
    def _pop(*, quiet: bool) -> None:
        popped = ctypes.c_void_p()
        try:
            native.cuda_call("cuCtxPopCurrent_v2", ctypes.byref(popped))
        except CudaError:
            if not quiet:
                raise
