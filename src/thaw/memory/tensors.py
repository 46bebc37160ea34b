"""torch on top of the pool: ``region(tag)`` routes torch's allocations into a tag; ``buffer()`` wraps one range.

How ``region`` works: each (tag, device) gets a ``torch.cuda.MemPool`` whose allocator
is a pair of C function pointers, and ``torch.cuda.use_mem_pool`` routes the current
thread's allocations into it. torch's caching allocator still splits and caches blocks;
it only asks our functions for whole segments, which the pool backs with VMM memory.
So engines that allocate their KV cache as many tensors work unchanged, and
``release``/``reacquire`` act on the segments under them.

The function pointers are ctypes callbacks into the pool, handed to torch through
``torch._C._cuda_customAllocator(alloc_ptr, free_ptr)`` — the very call
``torch.cuda.memory.CUDAPluggableAllocator`` makes after it ``dlsym``s a ``.so``.
Approaches considered:

* a compiled shim (a ``.so`` forwarding malloc/free to pointers registered from
  Python, built with ``cc`` on first use): the public constructor, but every worker
  image would need a C compiler and a writable cache directory, for code that only
  forwards two calls. Rejected for that; it would be the fallback if torch drops the
  private call (it has been stable since torch 2.0 and is what the public class uses).
* torch_memory_saver's approach (LD_PRELOAD over cudaMalloc plus a thread-local
  "current tag"): needs control of the worker's launch, and a native library.
* vLLM's cumem (a C extension doing create/map, Python callbacks keeping the
  handles): the same division of labour as ours, but it needs a build step.

Pitfall shared with vLLM's design: the allocator callback takes the GIL while torch
holds its allocator mutex. A second Python thread that holds the GIL and calls into
torch's allocator at that moment would deadlock; allocate inside ``region`` from one
thread (engines do, at start-up). An error inside a callback cannot cross into torch:
the callback returns NULL (torch raises OutOfMemoryError) and ``region`` re-raises it
as the pool's CudaError, which names the chunk and the driver call.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import traceback
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from thaw.errors import ConfigError, CudaError, HostError, ThawError
from thaw.memory.pool import Pool

_ALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p)
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p)


class TorchTagAllocator:
    """The MemPool of one (tag, device), with the two callbacks torch calls for segments."""

    def __init__(self, pool: Pool, tag: str, device: int) -> None:
        torch = _torch()
        make = getattr(torch._C, "_cuda_customAllocator", None)
        if make is None or not hasattr(torch.cuda, "MemPool") or not hasattr(torch.cuda, "use_mem_pool"):
            raise HostError(
                f"this torch ({torch.__version__}) has no CUDA pluggable allocator or MemPool",
                hint="thaw.memory.region needs a CUDA build of torch with torch.cuda.MemPool and use_mem_pool "
                "(2.6 or later); buffer() works without them",
            )
        self.pool = pool
        self.tag = tag
        self.device = device
        # keep the ctypes callbacks referenced for the life of the process: torch holds raw pointers
        self._alloc = _ALLOC(self._on_alloc)
        self._free = _FREE(self._on_free)
        alloc_ptr = ctypes.cast(self._alloc, ctypes.c_void_p).value
        free_ptr = ctypes.cast(self._free, ctypes.c_void_p).value
        self.allocator = make(alloc_ptr, free_ptr)
        # a MemPool binds its allocator on the device current at construction; use_mem_pool on
        # another device would silently fall back to torch's own cudaMalloc there
        with torch.cuda.device(device):
            self.mempool = torch.cuda.MemPool(self.allocator)
        # Never collect this object: if the MemPool were destroyed during interpreter shutdown, torch
        # would call back into a half-torn-down interpreter through callbacks that may be gone.
        # One pool per (tag, device) lives as long as the process, as the memory does.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(self))

    def _on_alloc(self, size: int, device: int, stream: int | None) -> int:
        try:
            return self.pool.allocate(self.tag, size, device, origin="region")
        except BaseException as exc:  # must not unwind into torch's C++: report through last_error
            self.pool.last_error = exc
            return 0

    def _on_free(self, ptr: int | None, size: int, device: int, stream: int | None) -> None:
        try:
            if ptr:
                self.pool.free(ptr)  # synchronizes first: cudaFree would, torch does not on this path
        except BaseException as exc:
            self.pool.last_error = exc
            print(f"thaw.memory: freeing 0x{ptr or 0:x} of tag {self.tag!r} failed:", file=sys.stderr)
            traceback.print_exception(exc, file=sys.stderr)


_allocators: dict[tuple[int, str, int], TorchTagAllocator] = {}
_allocators_lock = threading.Lock()


def allocator_for(pool: Pool, tag: str, device: int) -> TorchTagAllocator:
    key = (id(pool), tag, device)
    with _allocators_lock:
        if key not in _allocators:
            _allocators[key] = TorchTagAllocator(pool, tag, device)
        return _allocators[key]


@contextmanager
def region(pool: Pool, tag: str, device: int | None = None) -> Iterator[None]:
    """Route this thread's torch CUDA allocations on ``device`` (default: current) into ``tag``."""
    torch = _torch()
    index = torch.cuda.current_device() if device is None else int(device)
    if pool.tag(tag).state in ("released", "partial"):
        raise ConfigError("tag", f"tag {tag!r} is released: reacquire it before allocating in it")
    allocator = allocator_for(pool, tag, index)
    pool.last_error = None
    with torch.cuda.use_mem_pool(allocator.mempool, device=index):
        try:
            yield
        except RuntimeError as exc:  # torch.OutOfMemoryError (a RuntimeError) when our callback returned NULL
            cause = pool.last_error  # set only by a callback that failed inside this region
            if isinstance(cause, ThawError):
                pool.last_error = None
                raise cause from exc
            raise


class _CudaArray:
    """The smallest object torch.as_tensor accepts for device memory: it exposes __cuda_array_interface__."""

    def __init__(self, va: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (va, False),
            "version": 3,
            "strides": None,
        }


def wrap(va: int, nbytes: int, device: int) -> Any:
    """A uint8 CUDA tensor over ``nbytes`` at ``va`` on ``device``; the memory stays the caller's to manage."""
    torch = _torch()
    with torch.cuda.device(device):
        return torch.as_tensor(_CudaArray(va, nbytes), device=f"cuda:{device}")


def buffer(pool: Pool, nbytes: int, tag: str, device: int | None = None) -> Any:
    """A uint8 tensor of ``nbytes`` over its own VMM range in ``tag``; freed when the tensor is.

    torch keeps a reference to the ``__cuda_array_interface__`` object for as long as the
    tensor's storage lives (``tensor_from_cuda_array_interface``: Py_INCREF, and a
    from_blob deleter that DECREFs); a finalizer on that object gives the range back to
    the pool. The probe wrapped its VMM range the same way.
    """
    torch = _torch()
    index = torch.cuda.current_device() if device is None else int(device)
    va = pool.allocate(tag, nbytes, index, origin="buffer")
    try:
        holder = _CudaArray(va, nbytes)
        with torch.cuda.device(index):  # torch wraps the pointer on the current device
            tensor = torch.as_tensor(holder, device=f"cuda:{index}")
    except BaseException:
        pool.free(va)
        raise
    finalizer = weakref.finalize(holder, _free_quietly, pool, va)
    finalizer.atexit = False  # at interpreter exit the driver may already be torn down
    return tensor


def _free_quietly(pool: Pool, va: int) -> None:
    try:
        pool.free(va)
    except (ThawError, CudaError) as exc:  # runs from a finalizer: nobody to raise to
        print(f"thaw.memory: freeing buffer 0x{va:x} failed: {exc}", file=sys.stderr)


def _torch() -> Any:
    """torch, imported on first use, with a CUDA device visible (HostError otherwise, not torch's AssertionError)."""
    try:
        import torch
    except ImportError as exc:
        raise HostError("thaw.memory.region and buffer need torch", hint="pip install torch") from exc
    if not torch.cuda.is_available():
        raise HostError(f"torch {torch.__version__} sees no CUDA device",
                        hint="thaw.memory.region and buffer need a CUDA build of torch on a GPU host")
    return torch
