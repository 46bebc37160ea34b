"""The few libc calls Python's mmap module cannot make: mappings at a fixed address, address reservations, mincore.

The memfd stand-in for GPU memory (CPU tests, CI) must behave like CUDA VMM: reserve an
address range once, map shared memory into it at a fixed address, unmap it while
keeping the reservation, and map again at the same address later — which needs
``mmap(MAP_FIXED)`` on a raw address. ``mincore`` tells the loader how much of a file
already sits in the page cache (buffered reads then, O_DIRECT otherwise).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from thaw.errors import HostError

PROT_NONE, PROT_READ, PROT_WRITE = 0x0, 0x1, 0x2
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, 0x02, 0x10, 0x20, 0x4000
MAP_FAILED = ctypes.c_void_p(-1).value
PAGE = os.sysconf("SC_PAGE_SIZE")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.restype = ctypes.c_int
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    result = _libc.mmap(addr or None, length, prot, flags, fd, offset)
    if result in (None, MAP_FAILED):
        err = ctypes.get_errno()
        raise HostError(f"mmap of {length} bytes failed: {os.strerror(err)}")
    if flags & MAP_FIXED and result != addr:
        raise HostError(f"mmap(MAP_FIXED) at 0x{addr:x} returned 0x{result:x}")
    return int(result)


def munmap(addr: int, length: int) -> None:
    if _libc.munmap(addr, length) != 0:
        err = ctypes.get_errno()
        raise HostError(f"munmap of 0x{addr:x} (+{length}) failed: {os.strerror(err)}")


def reserve(length: int) -> int:
    """Reserve ``length`` bytes of address space (no memory behind it)."""
    return mmap(0, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)


def unreserve_range(addr: int, length: int) -> None:
    """Drop whatever is mapped at [addr, addr+length) and put a bare reservation back in its place."""
    mmap(addr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED)


def map_shared(addr: int, length: int, fd: int, *, writable: bool) -> None:
    """Map ``length`` bytes of ``fd`` at exactly ``addr`` (inside a reservation)."""
    prot = PROT_READ | (PROT_WRITE if writable else 0)
    mmap(addr, length, prot, MAP_SHARED | MAP_FIXED, fd, 0)


def anonymous(length: int) -> int:
    """Page-aligned read-write memory (a host buffer where no pinned memory is needed)."""
    return mmap(0, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)


def resident_fraction(fd: int, size: int) -> float:
    """The fraction of a file's pages in the page cache (1.0 for an empty file), by mincore over a mapping."""
    if size == 0:
        return 1.0
    length = -(-size // PAGE) * PAGE
    addr = mmap(0, length, PROT_READ, MAP_SHARED, fd, 0)
    try:
        pages = length // PAGE
        vec = (ctypes.c_ubyte * pages)()
        if _libc.mincore(addr, length, vec) != 0:
            return 0.0
        return (pages - bytes(vec).count(0)) / pages  # the kernel sets only bit 0
    finally:
        munmap(addr, length)
