"""A fake driver for tests: VMM semantics on host memory, with injectable failures.

Use it to test code that uses :mod:`thaw.memory` on a machine without a GPU::

    from thaw.memory.pool import Pool
    from thaw.memory.testing import FakeDriver

    driver = FakeDriver()
    pool = Pool(driver)
    va = pool.allocate("kv", 8 << 20, device=0)
    driver.fail("cuMemCreate", after=2)      # the third cuMemCreate from now fails
    pool.release("kv"); pool.reacquire("kv") # → CudaError naming chunk 2

It enforces what the real driver would refuse (mapping outside a reservation, mapping
twice, unmapping what is not mapped, touching unmapped memory, freeing a reservation
that still has mappings) and counts physical bytes per device, so leaks show.
"""

from __future__ import annotations

from dataclasses import dataclass

from thaw.cuda.native import KNOWN_ERRORS
from thaw.errors import CudaError

#: what fresh physical memory holds in the fake (the real driver promises nothing)
FRESH_BYTE = 0xA5


@dataclass
class _Failure:
    call: str
    countdown: int
    code: int


class FakeDriver:
    """:class:`thaw.memory.driver.Driver` on bytearrays."""

    def __init__(self, *, granularity: int = 2 << 20, capacity: int | None = None) -> None:
        self.gran = granularity
        self.capacity = capacity  # physical bytes per device, None = unlimited
        self.reservations: dict[int, tuple[int, int]] = {}  # va → (device, size)
        self.memory: dict[int, tuple[int, bytearray]] = {}  # handle → (device, bytes)
        self.mappings: dict[int, tuple[int, int]] = {}  # va → (size, handle)
        self.accessible: set[int] = set()  # mapping starts with read/write access
        self.calls: list[str] = []
        self.synchronized = 0
        self._failures: list[_Failure] = []
        self._next_va = 0x7F00_0000_0000
        self._next_handle = 1

    # --- failure injection ---------------------------------------------------------------------------

    def fail(self, call: str, *, after: int = 0, code: int = 2) -> None:
        """Make the (after+1)-th next call of ``call`` (a CUDA name, e.g. "cuMemMap") fail with ``code``."""
        self._failures.append(_Failure(call, after, code))

    def physical_bytes(self, device: int = 0) -> int:
        return sum(len(buf) for dev, buf in self.memory.values() if dev == device)

    # --- reading and writing "device" memory (what kernels would do) -------------------------------

    def write(self, va: int, data: bytes) -> None:
        """Write as a kernel would: the range may span several mappings, all of them accessible."""
        done = 0
        for buf, offset, n in self._pieces(va, len(data)):
            buf[offset : offset + n] = data[done : done + n]
            done += n

    def read(self, va: int, nbytes: int) -> bytes:
        return b"".join(bytes(buf[offset : offset + n]) for buf, offset, n in self._pieces(va, nbytes))

    # --- the Driver protocol -------------------------------------------------------------------------

    def granularity(self, device: int) -> int:
        self._enter("cuMemGetAllocationGranularity")
        return self.gran

    def reserve(self, device: int, size: int) -> int:
        self._enter("cuMemAddressReserve")
        self._check(size % self.gran == 0, "cuMemAddressReserve", "size is not a multiple of the granularity")
        va = self._next_va
        self._next_va += size + self.gran  # a guard gap, so overruns do not land in a neighbour
        self.reservations[va] = (device, size)
        return va

    def free_reservation(self, device: int, va: int, size: int) -> None:
        self._enter("cuMemAddressFree")
        self._check(self.reservations.get(va) == (device, size), "cuMemAddressFree", "no such reservation")
        self._check(not any(va <= m < va + size for m in self.mappings), "cuMemAddressFree", "range still mapped")
        del self.reservations[va]

    def create(self, device: int, size: int) -> int:
        self._enter("cuMemCreate")
        self._check(size % self.gran == 0, "cuMemCreate", "size is not a multiple of the granularity")
        if self.capacity is not None and self.physical_bytes(device) + size > self.capacity:
            raise CudaError("cuMemCreate", 2, KNOWN_ERRORS[2])
        handle = self._next_handle
        self._next_handle += 1
        self.memory[handle] = (device, bytearray([FRESH_BYTE]) * size)
        return handle

    def map(self, device: int, va: int, size: int, handle: int) -> None:
        self._enter("cuMemMap")
        self._check(handle in self.memory and len(self.memory[handle][1]) == size, "cuMemMap", "bad handle or size")
        self._check(self._reserved(va, size), "cuMemMap", "range is not inside a reservation")
        overlaps = any(m < va + size and va < m + msize for m, (msize, _) in self.mappings.items())
        self._check(not overlaps, "cuMemMap", "range already mapped")
        self.mappings[va] = (size, handle)

    def set_access(self, device: int, va: int, size: int) -> None:
        self._enter("cuMemSetAccess")
        self._check(self.mappings.get(va, (None,))[0] == size, "cuMemSetAccess", "range is not mapped")
        self.accessible.add(va)

    def unmap(self, device: int, va: int, size: int) -> None:
        self._enter("cuMemUnmap")
        self._check(self.mappings.get(va, (None,))[0] == size, "cuMemUnmap", "range is not mapped")
        del self.mappings[va]
        self.accessible.discard(va)

    def release(self, device: int, handle: int) -> None:
        self._enter("cuMemRelease")
        self._check(handle in self.memory, "cuMemRelease", "no such handle")
        self._check(all(h != handle for _, h in self.mappings.values()), "cuMemRelease",
                    "handle still mapped (the fake is stricter than the driver here)")
        del self.memory[handle]

    def synchronize(self, device: int) -> None:
        self._enter("cuCtxSynchronize")
        self.synchronized += 1

    def copy_to_host(self, device: int, va: int, dst: bytearray) -> None:
        self._enter("cuMemcpyDtoH_v2")
        dst[:] = self.read(va, len(dst))

    def copy_from_host(self, device: int, va: int, src: bytearray) -> None:
        self._enter("cuMemcpyHtoD_v2")
        self.write(va, bytes(src))

    def fill32(self, device: int, va: int, size: int, pattern: int) -> None:
        self._enter("cuMemsetD32_v2")
        self.write(va, (pattern & 0xFFFFFFFF).to_bytes(4, "little") * (size // 4))

    # --- internals ----------------------------------------------------------------------------------

    def _enter(self, call: str) -> None:
        self.calls.append(call)
        for failure in self._failures:
            if failure.call != call:
                continue
            if failure.countdown == 0:
                self._failures.remove(failure)
                raise CudaError(call, failure.code, KNOWN_ERRORS.get(failure.code, f"CUDA_ERROR_{failure.code}"),
                                detail="injected by FakeDriver")
            failure.countdown -= 1

    @staticmethod
    def _check(ok: bool, call: str, why: str) -> None:
        if not ok:
            raise CudaError(call, 1, KNOWN_ERRORS[1], detail=f"FakeDriver: {why}")

    def _reserved(self, va: int, size: int) -> bool:
        return any(r <= va and va + size <= r + rsize for r, (_, rsize) in self.reservations.items())

    def _pieces(self, va: int, nbytes: int) -> list[tuple[bytearray, int, int]]:
        """(buffer, offset, length) for each mapping the range crosses; CUDA_ERROR_ILLEGAL_ADDRESS on a hole."""
        pieces, cursor, end = [], va, va + nbytes
        while cursor < end:
            hit = next(((start, size, handle) for start, (size, handle) in self.mappings.items()
                        if start <= cursor < start + size and start in self.accessible), None)
            if hit is None:
                raise CudaError("kernel", 700, KNOWN_ERRORS[700],
                                detail=f"FakeDriver: 0x{cursor:x} is not mapped (or not accessible)")
            start, size, handle = hit
            n = min(end, start + size) - cursor
            pieces.append((self.memory[handle][1], cursor - start, n))
            cursor += n
        return pieces
