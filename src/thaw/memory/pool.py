"""The pool: tagged CUDA-VMM allocations whose physical memory can be dropped and re-created at the same address.

Every allocation reserves its own virtual range and backs it with physical chunks
(``chunk_bytes`` each, 256 MiB by default: the probe's measured layout, 32 × 256 MiB
released in 5.6 ms and re-mapped in 2.6 ms). A chunk is in one of three states,
tracked from what the driver confirmed::

    held      handle created, mapped, accessible
    released  no handle, nothing mapped (the VA stays reserved)
    stranded  handle alive but unmapped: a release whose cuMemRelease failed

``release`` walks the held chunks, ``reacquire`` the others, so either one finishes a
job a failure left half done. Both are all-or-nothing per call: when chunk *k* fails,
the chunks this call already changed are changed back, and the CudaError names the
chunk, its address and size, the driver call and what was rolled back.

Policy per tag (:class:`Policy`): DISCARD drops the contents (a KV cache, rebuilt by
the engine); BACKUP copies them to host memory before the release and back after the
reacquire (small state that must survive; the host copy is part of the process image).
With poisoning on, a DISCARD tag's reacquired memory is filled with ``POISON_PATTERN``,
so code that wrongly reads released contents fails loudly.

All policy lives here, in Python; the driver layer (driver.py) only maps and unmaps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from thaw.errors import ConfigError, CudaError, ThawError
from thaw.memory.driver import Driver

DEFAULT_CHUNK_BYTES = 256 << 20

#: 0x7FC0 is a quiet NaN in bf16 and in fp16, and 0x7FC07FC0 is a NaN in fp32: poisoned memory
#: reads as NaN in every float type a KV cache uses
POISON_PATTERN = 0x7FC07FC0


class Policy(str, Enum):
    """What happens to a tag's contents across release/reacquire."""

    DISCARD = "discard"
    BACKUP = "backup"


@dataclass(eq=False)
class Chunk:
    offset: int  # within its allocation
    size: int
    handle: int | None = None
    mapped: bool = False
    backup: bytearray | None = None

    @property
    def held(self) -> bool:
        return self.handle is not None and self.mapped

    @property
    def empty(self) -> bool:
        return self.handle is None and not self.mapped


@dataclass(eq=False)
class Allocation:
    tag: str
    device: int
    va: int
    size: int  # reserved and backed: ``requested`` rounded up to the granularity
    requested: int
    origin: str  # "region" (torch allocator) or "buffer"
    chunks: list[Chunk]


@dataclass(eq=False)
class Tag:
    name: str
    policy: Policy = Policy.DISCARD
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    allocations: dict[int, Allocation] = field(default_factory=dict)  # by va, in allocation order

    def items(self) -> list[tuple[Allocation, Chunk]]:
        return [(alloc, chunk) for alloc in self.allocations.values() for chunk in alloc.chunks]

    @property
    def state(self) -> str:
        """"empty", "held", "released" or "partial" (some chunks held, some not)."""
        chunks = [chunk for _, chunk in self.items()]
        if not chunks:
            return "empty"
        if all(c.held for c in chunks):
            return "held"
        if all(c.empty for c in chunks):
            return "released"
        return "partial"


class Pool:
    """Tags of VMM allocations over a :class:`Driver`. Thread-safe: torch may allocate from any thread."""

    def __init__(self, driver: Driver, *, poison: int | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.driver = driver
        #: fill pattern for reacquired DISCARD memory, or None
        self.poison = poison
        self.chunk_bytes = chunk_bytes
        #: the last error raised inside a torch allocator callback (which can only return NULL)
        self.last_error: BaseException | None = None
        self._tags: dict[str, Tag] = {}
        self._by_va: dict[int, Allocation] = {}
        self._lock = threading.RLock()

    # --- tags and policy ---------------------------------------------------------------------------

    def tag(self, name: str) -> Tag:
        """The tag ``name``, created (DISCARD, default chunk size) on first use."""
        if not isinstance(name, str) or not name:
            raise ConfigError("tag", f"a tag is a non-empty string, got {name!r}")
        with self._lock:
            if name not in self._tags:
                self._tags[name] = Tag(name, chunk_bytes=self.chunk_bytes)
            return self._tags[name]

    def set_policy(self, name: str, policy: Policy | str | None = None, *, chunk_bytes: int | None = None) -> None:
        """Set a tag's policy and/or chunk size (for allocations made afterwards)."""
        with self._lock:
            tag = self.tag(name)
            if policy is not None:
                try:
                    new = Policy(policy)
                except ValueError:
                    raise ConfigError("policy", f"{policy!r} is not one of {[p.value for p in Policy]}") from None
                if new is not tag.policy and tag.state in ("released", "partial"):
                    raise ConfigError("policy", f"tag {name!r} is released: reacquire it before changing its policy")
                tag.policy = new
            if chunk_bytes is not None:
                if chunk_bytes <= 0:
                    raise ConfigError("chunk_bytes", f"must be positive, got {chunk_bytes}")
                tag.chunk_bytes = int(chunk_bytes)

    def tags(self) -> list[str]:
        with self._lock:
            return list(self._tags)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per tag: policy, state, bytes reserved and held, allocations, chunks, bytes backed up on the host."""
        with self._lock:
            out = {}
            for name, tag in self._tags.items():
                items = tag.items()
                out[name] = {
                    "policy": tag.policy.value,
                    "state": tag.state,
                    "bytes": sum(a.size for a in tag.allocations.values()),
                    "held_bytes": sum(c.size for _, c in items if c.held),
                    "allocations": len(tag.allocations),
                    "chunks": len(items),
                    "backup_bytes": sum(len(c.backup) for _, c in items if c.backup is not None),
                    "devices": sorted({a.device for a in tag.allocations.values()}),
                }
            return out

    # --- allocate and free -----------------------------------------------------------------------------

    def allocate(self, name: str, nbytes: int, device: int, *, origin: str = "buffer") -> int:
        """Reserve, back and map ``nbytes`` (rounded up to the granularity) in tag ``name``; return the address."""
        if nbytes <= 0:
            raise ConfigError("nbytes", f"must be positive, got {nbytes}")
        with self._lock:
            tag = self.tag(name)
            if tag.state in ("released", "partial"):
                raise ConfigError("tag", f"tag {name!r} is released: reacquire it before allocating in it")
            granularity = self.driver.granularity(device)
            size = _round_up(nbytes, granularity)
            step = max(granularity, _round_up(tag.chunk_bytes, granularity))
            chunks = [Chunk(offset, min(step, size - offset)) for offset in range(0, size, step)]
            try:
                va = self.driver.reserve(device, size)
            except CudaError as exc:
                raise CudaError(exc.call, exc.code, exc.name,
                                detail=f"reserving {_size(size)} of addresses for tag {name!r} on device "
                                f"{device}") from exc
            alloc = Allocation(name, device, va, size, nbytes, origin, chunks)
            try:
                self._map(list(enumerate((alloc, c) for c in chunks)), len(chunks),
                          f"allocating {_size(nbytes)} in tag {name!r}")
            except CudaError:
                self._free_reservation_quietly(alloc)
                raise
            tag.allocations[va] = alloc
            self._by_va[va] = alloc
            return va

    def free(self, va: int, *, synchronize: bool = True) -> None:
        """Unmap and release an allocation and give back its address range.

        ``synchronize`` first waits for the device: unlike cudaFree, unmapping does not
        wait for kernels that may still use the memory.
        """
        with self._lock:
            alloc = self._by_va.pop(va, None)
            if alloc is None:
                raise ConfigError("ptr", f"0x{va:x} was not allocated by thaw.memory")
            del self._tags[alloc.tag].allocations[va]
            if synchronize and any(not c.empty for c in alloc.chunks):
                self.driver.synchronize(alloc.device)
            errors = self._unmap_quietly((alloc, c) for c in alloc.chunks)
            try:
                self.driver.free_reservation(alloc.device, alloc.va, alloc.size)
            except CudaError as exc:
                errors.append(str(exc))
            if errors:
                raise CudaError("thaw.memory.free", -1, "PARTIAL_FREE",
                                detail=f"freeing 0x{va:x} ({_size(alloc.size)}) left memory behind: "
                                + "; ".join(errors))

    # --- release and reacquire ---------------------------------------------------------------------------

    def release(self, name: str) -> dict[str, Any]:
        """Drop the physical memory of tag ``name``, keeping its addresses (BACKUP: copy to host first)."""
        with self._lock:
            tag = self._existing(name)
            started = time.perf_counter()
            numbered = [(k, item) for k, item in enumerate(tag.items()) if not item[1].empty]
            total = len(tag.items())
            for device in sorted({alloc.device for _, (alloc, _) in numbered}):
                self.driver.synchronize(device)  # no kernel may still use what we unmap
            if tag.policy is Policy.BACKUP:
                self._back_up(tag, numbered, total)
            done: list[tuple[int, tuple[Allocation, Chunk]]] = []
            for k, (alloc, chunk) in numbered:
                try:
                    self._unmap_chunk(alloc, chunk)
                except CudaError as exc:
                    outcome = self._remap_after_failed_release(tag, done, (alloc, chunk))
                    for _, (_, c) in numbered:
                        if c.held:
                            c.backup = None  # mapped with its contents: the host copy is not needed
                    raise _chunk_error(exc, f"releasing tag {name!r}", k, total, alloc, chunk, outcome) from exc
                done.append((k, (alloc, chunk)))
            return self._report(tag, [item for _, item in numbered], started)

    def reacquire(self, name: str) -> dict[str, Any]:
        """Map fresh physical memory at tag ``name``'s addresses (BACKUP: copy the contents back; poison otherwise)."""
        with self._lock:
            tag = self._existing(name)
            started = time.perf_counter()
            numbered = [(k, item) for k, item in enumerate(tag.items()) if not item[1].held]
            total = len(tag.items())
            self._map(numbered, total, f"reacquiring tag {name!r}")
            items = [item for _, item in numbered]
            try:
                self._fill(tag, items)
            except CudaError as exc:
                errors = self._unmap_quietly(items)
                state = ("released again, its host backup kept" if not errors
                         else f"left {tag.state} ({'; '.join(errors)})")
                raise CudaError(exc.call, exc.code, exc.name,
                                detail=f"restoring the contents of tag {name!r} failed; the tag was {state}") from exc
            for _, chunk in items:
                chunk.backup = None
            report = self._report(tag, items, started)
            report["poisoned"] = bool(items) and tag.policy is Policy.DISCARD and self.poison is not None
            return report

    def release_all(self) -> dict[str, Any]:
        """Release every tag that holds memory; if one fails, reacquire those this call released, then raise."""
        with self._lock:
            reports: list[dict[str, Any]] = []
            for name in [n for n, t in self._tags.items() if t.state in ("held", "partial")]:
                try:
                    reports.append(self.release(name))
                except ThawError as exc:
                    _undo(exc, "reacquire", [r["tag"] for r in reports], self.reacquire)
                    raise
            return {"released": reports, "bytes": sum(r["bytes"] for r in reports)}

    def reacquire_all(self) -> dict[str, Any]:
        """Reacquire every tag with released memory; if one fails, release again those this call reacquired."""
        with self._lock:
            reports: list[dict[str, Any]] = []
            for name in [n for n, t in self._tags.items() if t.state in ("released", "partial")]:
                try:
                    reports.append(self.reacquire(name))
                except ThawError as exc:
                    _undo(exc, "release", [r["tag"] for r in reports], self.release)
                    raise
            return {"reacquired": reports, "bytes": sum(r["bytes"] for r in reports)}

    # --- internals ------------------------------------------------------------------------------------

    def _existing(self, name: str) -> Tag:
        tag = self._tags.get(name)
        if tag is None:
            raise ConfigError("tag", f"no tag {name!r} in the pool (known: {sorted(self._tags)})")
        return tag

    def _map(self, numbered: list[tuple[int, tuple[Allocation, Chunk]]], total: int, action: str) -> None:
        """Map the given chunks in order; on failure at chunk k, release again those mapped here, raise."""
        done: list[int] = []
        for k, (alloc, chunk) in numbered:
            try:
                self._map_chunk(alloc, chunk)
            except CudaError as exc:
                mapped_here = [item for i, item in numbered if i in set(done)]
                errors = self._unmap_quietly(reversed(mapped_here))
                undone = f"{_span(done)} released again" if done else "no chunk was mapped by this call"
                if errors:
                    undone += f"; releasing them again failed too: {'; '.join(errors)}"
                raise _chunk_error(exc, action, k, total, alloc, chunk, undone) from exc
            done.append(k)

    def _map_chunk(self, alloc: Allocation, chunk: Chunk) -> None:
        """create → map → set access, each only if not done yet; a failure undoes this call's own steps."""
        created = mapped = False
        va = alloc.va + chunk.offset
        try:
            if chunk.handle is None:
                chunk.handle = self.driver.create(alloc.device, chunk.size)
                created = True
            if not chunk.mapped:
                self.driver.map(alloc.device, va, chunk.size, chunk.handle)
                chunk.mapped = mapped = True
            self.driver.set_access(alloc.device, va, chunk.size)
        except CudaError:
            if mapped:
                self._unmap_quietly([(alloc, chunk)], release=created)
            elif created:
                self._unmap_quietly([(alloc, chunk)])
            raise

    def _unmap_chunk(self, alloc: Allocation, chunk: Chunk, *, release: bool = True) -> None:
        if chunk.mapped:
            self.driver.unmap(alloc.device, alloc.va + chunk.offset, chunk.size)
            chunk.mapped = False
        if release and chunk.handle is not None:
            self.driver.release(alloc.device, chunk.handle)
            chunk.handle = None

    def _unmap_quietly(self, items: Iterable[tuple[Allocation, Chunk]], *, release: bool = True) -> list[str]:
        """Unmap (and release) each chunk, carrying on past failures; return them as text."""
        errors = []
        for alloc, chunk in items:
            try:
                self._unmap_chunk(alloc, chunk, release=release)
            except CudaError as exc:
                errors.append(f"chunk at 0x{alloc.va + chunk.offset:x}: {exc}")
        return errors

    def _back_up(self, tag: Tag, numbered: list[tuple[int, tuple[Allocation, Chunk]]], total: int) -> None:
        for k, (alloc, chunk) in numbered:
            try:
                buffer = bytearray(chunk.size)
                self.driver.copy_to_host(alloc.device, alloc.va + chunk.offset, buffer)
            except CudaError as exc:
                for _, (_, c) in numbered:
                    c.backup = None
                raise _chunk_error(exc, f"backing up tag {tag.name!r}", k, total, alloc, chunk,
                                   "nothing was released") from exc
            chunk.backup = buffer

    def _fill(self, tag: Tag, items: list[tuple[Allocation, Chunk]]) -> None:
        """After a reacquire: copy BACKUP contents back, or poison DISCARD memory when asked to."""
        for alloc, chunk in items:
            va = alloc.va + chunk.offset
            if tag.policy is Policy.BACKUP and chunk.backup is not None:
                self.driver.copy_from_host(alloc.device, va, chunk.backup)
            elif tag.policy is Policy.DISCARD and self.poison is not None:
                self.driver.fill32(alloc.device, va, chunk.size, self.poison)

    def _remap_after_failed_release(self, tag: Tag, done: list[tuple[int, tuple[Allocation, Chunk]]],
                                    failed: tuple[Allocation, Chunk]) -> str:
        """Map back what a failed release changed (the chunks before it, and the failed one itself)."""
        errors = []
        for alloc, chunk in [failed, *reversed([item for _, item in done])]:
            try:
                fresh = chunk.handle is None
                self._map_chunk(alloc, chunk)
                if fresh:  # only re-created memory needs its backup (or poison); the failed chunk kept its own
                    self._fill(tag, [(alloc, chunk)])
            except CudaError as exc:
                errors.append(f"chunk at 0x{alloc.va + chunk.offset:x}: {exc}")
        prior = _span([k for k, _ in done])
        if errors:
            return f"mapping back failed: {'; '.join(errors)}; the tag is {tag.state}"
        kept = "contents restored from the host backup" if tag.policy is Policy.BACKUP else "contents lost (discard)"
        return (f"{prior} mapped again; " if prior else "") + f"the tag is held again, {kept}"

    def _free_reservation_quietly(self, alloc: Allocation) -> None:
        try:
            self.driver.free_reservation(alloc.device, alloc.va, alloc.size)
        except CudaError:
            pass  # the allocation already failed with the error that matters; the VA leaks

    @staticmethod
    def _report(tag: Tag, items: list[tuple[Allocation, Chunk]], started: float) -> dict[str, Any]:
        return {
            "tag": tag.name,
            "policy": tag.policy.value,
            "bytes": sum(chunk.size for _, chunk in items),
            "chunks": len(items),
            "seconds": round(time.perf_counter() - started, 6),
        }


def _chunk_error(exc: CudaError, action: str, k: int, total: int, alloc: Allocation, chunk: Chunk,
                 undone: str) -> CudaError:
    where = f"{action}: chunk {k} of {total} (0x{alloc.va + chunk.offset:x}, {_size(chunk.size)}) failed"
    return CudaError(exc.call, exc.code, exc.name, detail=where + (f"; {undone}" if undone else ""))


def _undo(exc: BaseException, verb: str, names: list[str], fn: Any) -> None:
    """Best-effort undo of the tags a *_all call already did; failures become notes on ``exc``."""
    for name in reversed(names):
        try:
            fn(name)
        except ThawError as again:
            exc.add_note(f"undoing: could not {verb} tag {name!r} either: {again}")


def _span(indices: list[int]) -> str:
    """[0, 1, 2] → "chunks 0..2"; [4] → "chunk 4"; [1, 5] → "chunks 1, 5"; [] → ""."""
    if not indices:
        return ""
    if len(indices) == 1:
        return f"chunk {indices[0]}"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"chunks {indices[0]}..{indices[-1]}"
    return "chunks " + ", ".join(map(str, indices))


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _size(nbytes: int) -> str:
    if nbytes >= 1 << 30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB"
