"""GPU memory that can leave a snapshot: a CUDA-VMM pool with named tags (issue #4).

An engine's KV cache would otherwise be checkpointed and dumped with the process,
bloating images by tens of GiB. With CUDA virtual memory management the physical
memory is released before the checkpoint while the virtual range stays reserved, and
re-created at the same address after the restore, so tensors, pointers and captured
CUDA graphs stay valid::

    import thaw.memory

    thaw.memory.set_policy("kv", "discard")          # the default; "backup" keeps contents
    with thaw.memory.region("kv"):                   # torch allocations in here go to the pool
        kv_cache = [torch.empty(...) for _ in range(layers)]
    scratch = thaw.memory.buffer(1 << 30, "scratch") # one uint8 tensor over its own range

    thaw.memory.release("kv"); thaw.memory.reacquire("kv")   # by hand, or:
    # nothing: the freeze hook releases every tag before the GPU lock, the thaw hook
    # reacquires them after the unlock (registered on first use of the pool)

``THAW_MEMORY_POISON=1`` (or :func:`set_poison`) fills reacquired discard-policy memory
with NaNs (``POISON_PATTERN``), so code that wrongly relies on released contents fails
loudly. The design and its pitfalls are in docs/memory.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from thaw.memory import hooks, tensors
from thaw.memory.pool import DEFAULT_CHUNK_BYTES, POISON_PATTERN, Policy, Pool

ENV_POISON = "THAW_MEMORY_POISON"

_pool: Pool | None = None
_pool_lock = threading.Lock()


def default_pool() -> Pool:
    """The process's pool (over the real driver), created on first use; its hooks are registered then."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from thaw.memory.driver import CudaDriver

            _pool = Pool(CudaDriver(), poison=_poison_from_env())
            hooks.install(default_pool)
        return _pool


def use_pool(replacement: Pool) -> None:
    """Make ``replacement`` the process's pool (tests: a Pool over thaw.memory.testing.FakeDriver)."""
    global _pool
    with _pool_lock:
        _pool = replacement
        hooks.install(default_pool)


@contextmanager
def region(tag: str, *, device: int | None = None) -> Iterator[None]:
    """Route this thread's torch CUDA allocations on ``device`` (default: current) into ``tag``."""
    with tensors.region(default_pool(), tag, device):
        yield


def mempool(tag: str, *, device: int | None = None) -> Any:
    """The ``torch.cuda.MemPool`` behind ``tag`` on ``device``: give its ``.id`` to ``torch.cuda.graph(pool=...)``
    so that a captured graph's activations live in ``tag`` (and leave the snapshot with it, under "discard").

    Capture with ``capture_error_mode="relaxed"``: the pool maps new segments with driver
    calls that strict ("global") capture mode forbids on other threads.
    """
    torch = tensors._torch()
    index = torch.cuda.current_device() if device is None else int(device)
    return tensors.allocator_for(default_pool(), tag, index).mempool


def buffer(nbytes: int, tag: str, *, device: int | None = None) -> Any:
    """A uint8 CUDA tensor of ``nbytes`` on its own VMM range in ``tag``."""
    return tensors.buffer(default_pool(), nbytes, tag, device)


def release(tag: str) -> dict[str, Any]:
    """Drop ``tag``'s physical memory, keep its addresses. Returns {tag, policy, bytes, chunks, seconds}."""
    return default_pool().release(tag)


def reacquire(tag: str) -> dict[str, Any]:
    """Map fresh memory at ``tag``'s addresses (restoring a backup-policy tag's contents)."""
    return default_pool().reacquire(tag)


def set_policy(tag: str, policy: Policy | str | None = None, *, chunk_bytes: int | None = None) -> None:
    """``policy``: "discard" (default: contents are lost) or "backup" (copied to host memory and back)."""
    default_pool().set_policy(tag, policy, chunk_bytes=chunk_bytes)


def tags() -> list[str]:
    return default_pool().tags()


def stats() -> dict[str, dict[str, Any]]:
    """Per tag: policy, state ("held", "released", "partial", "empty"), bytes, held_bytes, chunks, ..."""
    return default_pool().stats()


def set_poison(enabled: bool = True, pattern: int = POISON_PATTERN) -> None:
    """Fill reacquired discard-policy memory with ``pattern`` (a 32-bit word), or stop doing so."""
    default_pool().poison = (pattern & 0xFFFFFFFF) if enabled else None


def _poison_from_env() -> int | None:
    value = os.environ.get(ENV_POISON, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return None
    if value in ("1", "true", "yes", "on"):
        return POISON_PATTERN
    try:
        return int(value, 0) & 0xFFFFFFFF  # e.g. THAW_MEMORY_POISON=0xdeadbeef
    except ValueError:
        return POISON_PATTERN


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "ENV_POISON",
    "POISON_PATTERN",
    "Policy",
    "Pool",
    "buffer",
    "default_pool",
    "mempool",
    "reacquire",
    "region",
    "release",
    "set_poison",
    "set_policy",
    "stats",
    "tags",
    "use_pool",
]
