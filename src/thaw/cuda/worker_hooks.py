"""Worker-side hooks for torch workers: quiet the GPU before a snapshot, report what it holds.

Call :func:`install` once in the worker, before ``thaw.worker.quiesce()``::

    import thaw.cuda.worker_hooks
    thaw.cuda.worker_hooks.install()

The freeze hook synchronises every device torch uses and calls
``torch.cuda.empty_cache()``: reserved-but-unused cache memory is otherwise
checkpointed and dumped (probe: 17.6 instead of 19.6 GiB, every phase faster). It
reports each GPU's UUID, name and torch's reserved/allocated bytes, which thaw records
in the manifest. A frozen check — it runs after *every* freeze hook, so that the hook
that unmaps imported memory may be registered later — refuses while the worker still
declares GPU memory imported from another process (:func:`declare_imported`): such a
process checkpoints fine but cannot be restored (probe, second run: restore fails with
801, the process stays stuck).

It also shuts down torch inductor's compile-worker pool
(``torch._inductor.async_compile.shutdown_compile_workers()``, torch 2.2 … 2.13): a
``torch/_inductor/compile_worker`` subprocess and one child per compile thread, which
map /dev/nvidia0 and /dev/nvidiactl without CUDA state of their own (H200, issue 16) so
that CRIU cannot dump them, and which hold a copy of torch each (an image the size of
the pool). Inductor starts a new pool at its next compile; nothing needs undoing.

The thaw hook synchronises and reports the GPU the driver now runs the worker on.
After a restore onto another GPU, torch's cached ``get_device_properties().uuid``
still names the old GPU while ``cuDeviceGetUuid`` names the new one (probe), so the
report takes the UUID from the driver.

torch is never imported here: a worker that has not imported it has no torch GPU
state to quiet.
"""

from __future__ import annotations

import sys
from typing import Any

import thaw.worker
from thaw.cuda.gpus import device_uuid, normalize_uuid
from thaw.errors import ConfigError, CudaError, WorkerError

#: one name for both hooks: thaw.worker undoes a completed freeze hook with the thaw hook of its name
HOOK = "thaw.cuda.torch"

_imported: dict[str, int] = {}
_options = {"empty_cache": True, "stop_compile_pool": True}


def install(*, empty_cache: bool = True, stop_compile_pool: bool = True) -> None:
    """Register the freeze and thaw hooks (again: re-registering replaces them)."""
    _options["empty_cache"] = empty_cache
    _options["stop_compile_pool"] = stop_compile_pool
    thaw.worker.on_freeze(_freeze, name=HOOK)
    thaw.worker.on_thaw(_thaw, name=HOOK)
    thaw.worker.on_frozen(_refuse_imported, name=HOOK)


def declare_imported(name: str, nbytes: int) -> None:
    """Note that the worker maps ``nbytes`` of GPU memory imported from another process under ``name``.

    While any declaration stands, a snapshot is refused. Unmap the memory, release the
    imported handles, close their fds, then :func:`forget_imported` (keep the VA
    reservation to map it again after the restore, as the probe's GMS worker did).
    """
    _imported[name] = int(nbytes)


def forget_imported(name: str) -> None:
    _imported.pop(name, None)


def imported() -> dict[str, int]:
    return dict(_imported)


def _refuse_imported(ctx: thaw.worker.HookContext) -> None:
    if _imported:
        listing = ", ".join(f"{name} ({nbytes} bytes)" for name, nbytes in sorted(_imported.items()))
        raise WorkerError(
            f"the worker still maps GPU memory imported from another process: {listing}",
            hint="unmap and release imported memory before the snapshot (a restore of such a process fails "
            "with CUDA_ERROR_NOT_SUPPORTED and leaves it stuck), then call forget_imported()",
        )


def _freeze(ctx: thaw.worker.HookContext) -> dict[str, Any]:
    stopped = stop_compile_pool() if _options["stop_compile_pool"] else {}
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {"gpus": [], **stopped}
    used = _devices_in_use(torch)
    for index in used:
        torch.cuda.synchronize(index)
    if _options["empty_cache"]:
        torch.cuda.empty_cache()
    return {"gpus": [_describe(torch, index) for index in used], "host": trim_host(torch), **stopped}


def stop_compile_pool() -> dict[str, Any]:
    """Shut down torch inductor's compile-worker pools, waiting for their processes; a report for the manifest.

    Nothing happens when inductor never ran in this process (its module is not
    imported, or no pool was started). Inductor starts a new pool at its next compile.
    """
    async_compile = sys.modules.get("torch._inductor.async_compile")
    pools = len(getattr(async_compile, "_pool_set", ()) or ())
    if async_compile is None or not pools:
        return {}
    async_compile.shutdown_compile_workers()
    return {"compile_pools_stopped": pools}


def trim_host(torch: Any = None) -> dict[str, int]:
    """Give freed host memory back before the dump: every resident page left is a page CRIU writes and restores.

    Collects garbage, drops torch's cached pinned host blocks (they would be checkpointed
    as host memory), and asks glibc to return free heap pages (``malloc_trim``). Reports
    the resident set before and after.
    """
    import ctypes
    import gc

    before = _rss()
    gc.collect()
    if torch is not None and hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc
    return {"rss_before": before, "rss_after": _rss()}


def _rss() -> int:
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _thaw(ctx: thaw.worker.HookContext) -> dict[str, Any]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {"gpus": []}
    gpus = []
    for index in _devices_in_use(torch):
        torch.cuda.synchronize(index)
        gpus.append(_describe(torch, index))
    return {"gpus": gpus}


def _devices_in_use(torch: Any) -> list[int]:
    current = torch.cuda.current_device()
    return [i for i in range(torch.cuda.device_count()) if i == current or torch.cuda.memory_reserved(i) > 0]


def _describe(torch: Any, index: int) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    cached = _torch_uuid(props)
    try:
        uuid = device_uuid(index)
    except CudaError:
        uuid = cached
    return {
        "index": index,
        "uuid": uuid,
        "name": props.name,
        "reserved_bytes": int(torch.cuda.memory_reserved(index)),
        "allocated_bytes": int(torch.cuda.memory_allocated(index)),
        "pools": _pools(torch, index),
        # differs from uuid after a restore onto another GPU: torch caches device properties
        "torch_cached_uuid": cached,
    }


def _pools(torch: Any, index: int) -> list[dict[str, Any]]:
    """torch's reserved memory by pool (the default pool, graph pools, thaw.memory regions) and by stream.

    What the snapshot still carries after the freeze hooks: a pool whose memory was
    released by thaw.memory shows its segments as reserved by torch but unmapped.
    """
    try:
        segments = torch.cuda.memory_snapshot()
    except Exception:  # noqa: BLE001 - a diagnostic must never fail a snapshot
        return []
    pools: dict[tuple[Any, Any], dict[str, int]] = {}
    for seg in segments:
        if seg.get("device") != index:
            continue
        key = (str(seg.get("segment_pool_id")), seg.get("stream"))
        entry = pools.setdefault(key, {"segments": 0, "reserved": 0, "allocated": 0})
        entry["segments"] += 1
        entry["reserved"] += int(seg.get("total_size", 0))
        entry["allocated"] += int(seg.get("allocated_size", 0))
    rows = [{"pool": pool, "stream": stream, **v} for (pool, stream), v in pools.items()]
    return sorted(rows, key=lambda r: -r["reserved"])[:12]


def _torch_uuid(props: Any) -> str:
    raw = str(getattr(props, "uuid", "") or "")
    if not raw:
        return ""
    try:
        return normalize_uuid(raw)
    except ConfigError:  # a spelling we do not know: report it as torch gives it
        return raw
