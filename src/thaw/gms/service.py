"""The GPU memory service's state: which weight sets are resident, who holds them, what may be evicted.

One service owns the weight memory of one GPU. A set is loaded once (in a background
thread, so ``prefetch`` returns at once) and stays resident after its workers exit, until
the memory budget needs its room: then the least recently used set that nobody holds is
evicted. A set someone holds (a connection that acquired it and has not closed) is never
evicted — its memory is mapped in a worker. Requests for a set that is loading wait for it.

Trust: requests come from workers. A request may only name files under the service's
allowed roots (resolved, so a symlink cannot lead out), and every file is parsed as a
hostile safetensors file (plan.py) before any memory is created for it.

Identity: a set is found again by its content digest and placement when the request names
a digest (a restore: the manifest recorded it), else by the files' identity on disk (path,
inode, size, modification time) and placement (a cold start).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from thaw.errors import ConfigError, CudaError, GmsError, ThawError
from thaw.gms import loader
from thaw.gms.device import Backend
from thaw.gms.models import Layout, LoadReport, ServiceStatus, SetStatus, WeightSpec
from thaw.gms.plan import chunk_sizes, place

DEFAULT_CHUNK = 2 << 30
LOAD_TIMEOUT_S = 1800.0


@dataclass(eq=False)
class ResidentSet:
    spec: WeightSpec
    fingerprints: set[str]
    state: str = "loading"
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (handle, size)
    base: int | None = None
    layout: Layout | None = None
    load: LoadReport | None = None
    error: ThawError | None = None
    holders: set[int] = field(default_factory=set)
    last_used: float = field(default_factory=time.time)
    done: threading.Event = field(default_factory=threading.Event)
    #: the same bytes under the same placement were resident already: this request is served by that set
    alias: ResidentSet | None = None

    def resolved(self) -> ResidentSet:
        entry = self
        while entry.alias is not None:
            entry = entry.alias
        return entry

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.chunks)

    def status(self) -> SetStatus:
        return SetStatus(
            key=self.layout.key if self.layout else None,
            digest=self.layout.digest if self.layout else self.spec.digest,
            state=self.state,  # type: ignore[arg-type]
            bytes=self.bytes,
            holders=len(self.holders),
            files=[f.path for f in self.spec.files],
            load=self.load,
            error=str(self.error) if self.error else None,
            last_used=self.last_used,
        )


class WeightService:
    def __init__(self, backend: Backend, *, allow: list[Path], budget_bytes: int | None = None,
                 threads: int = loader.DEFAULT_THREADS, chunk_bytes: int = DEFAULT_CHUNK,
                 io: loader.IoMode = "auto") -> None:
        if not allow:
            raise ConfigError("allow", "the GPU memory service needs at least one directory it may load weights from",
                              hint="pass --allow DIR (e.g. the model volume)")
        self.backend = backend
        self.allow = [Path(os.path.realpath(p)) for p in allow]
        self.budget = budget_bytes
        self.chunk_bytes = chunk_bytes
        self.io = io
        self.sets: list[ResidentSet] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.buffers = loader.HostBuffers(backend, 2 * threads)
        self.load_lock = threading.Lock()  # one load at a time: they share the buffers and the link

    # --- requests --------------------------------------------------------------------------------

    def prefetch(self, spec: WeightSpec, *, wait: bool = False) -> SetStatus:
        entry = self._find_or_start(spec)
        if wait:
            self._wait(entry)
        return entry.resolved().status()

    def acquire(self, spec: WeightSpec, holder: int) -> tuple[Layout, list[int]]:
        """Make the set resident, hold it for ``holder``, and return its layout with one fresh fd per chunk."""
        entry = self._find_or_start(spec)
        self._wait(entry)
        entry = entry.resolved()
        with self.lock:
            if entry.state != "ready" or entry not in self.sets:
                raise GmsError("the weight set was evicted while it was acquired; ask again", code="retry")
            assert entry.layout is not None
            fds: list[int] = []
            try:
                for handle, _ in entry.chunks:
                    fds.append(self.backend.export(handle))
            except BaseException:
                for fd in fds:
                    os.close(fd)
                raise
            entry.holders.add(holder)
            entry.last_used = time.time()
            return entry.layout, fds

    def release(self, holder: int, key: str | None = None) -> None:
        with self.lock:
            for entry in self.sets:
                if key is None or (entry.layout and entry.layout.key == key):
                    if holder in entry.holders:
                        entry.holders.discard(holder)
                        entry.last_used = time.time()

    def evict(self, key: str) -> SetStatus:
        with self.lock:
            entry = next((e for e in self.sets if e.layout and e.layout.key == key), None)
            if entry is None:
                raise GmsError(f"no resident weight set {key}", code="not_found")
            if entry.holders:
                raise GmsError(f"weight set {key} is mapped by {len(entry.holders)} worker(s); not evicted",
                               code="busy", hint="stop the workers that use it first")
            if entry.state == "loading":
                raise GmsError(f"weight set {key} is still loading", code="busy")
            self._free(entry)
            return entry.status()

    def status(self) -> ServiceStatus:
        with self.lock:
            sets = [e.status() for e in self.sets]
            resident = sum(e.bytes for e in self.sets)
        try:
            free = self.backend.free_bytes()
        except CudaError:
            free = None
        return ServiceStatus(device=self.backend.device, pid=os.getpid(), budget_bytes=self.budget or 0,
                             resident_bytes=resident, free_bytes=free, sets=sets)

    def close(self) -> None:
        with self.lock:
            for entry in list(self.sets):
                self._free(entry)
        self.buffers.close()

    # --- internals --------------------------------------------------------------------------------

    def _find_or_start(self, spec: WeightSpec) -> ResidentSet:
        spec = self._checked(spec)
        fingerprint = self._fingerprint(spec)
        with self.lock:
            for entry in self.sets:
                same_content = (spec.digest is not None and entry.layout is not None
                                and entry.layout.digest == spec.digest
                                and entry.spec.placement() == spec.placement())
                if same_content or fingerprint in entry.fingerprints:
                    entry.last_used = time.time()
                    return entry
            entry = ResidentSet(spec=spec, fingerprints={fingerprint})
            self.sets.append(entry)
        threading.Thread(target=self._load, args=(entry,), name="gms-load", daemon=True).start()
        return entry

    def _wait(self, entry: ResidentSet) -> None:
        if not entry.done.wait(LOAD_TIMEOUT_S):
            raise GmsError(f"loading the weight set took longer than {LOAD_TIMEOUT_S:.0f} s", code="timeout")
        if entry.state == "failed":
            assert entry.error is not None
            raise entry.error

    def _load(self, entry: ResidentSet) -> None:
        try:
            with self.load_lock:
                placement = place(entry.spec)
                sizes = chunk_sizes(placement.nbytes, self.backend.granularity, self.chunk_bytes)
                self._make_room(sum(sizes), entry)
                for size in sizes:
                    entry.chunks.append((self.backend.create(size), size))
                entry.base = self.backend.map(entry.chunks)
                files, report = loader.fill(self.backend, entry.base, entry.spec, placement, self.buffers, io=self.io)
            digest = loader.set_digest(files)
            if entry.spec.digest is not None and entry.spec.digest != digest:
                raise GmsError(f"the weight files read ({', '.join(f.path for f in files)}) have digest {digest}, "
                               f"the request expects {entry.spec.digest}", code="integrity",
                               hint="the weights on this node differ from the snapshot's")
            key = "gms-" + xxhash.xxh3_128(f"{digest}|{entry.spec.placement()}".encode()).hexdigest()
            layout = Layout(key=key, digest=digest, device=self.backend.device, files=files,
                            tensors=placement.tensors, nbytes=placement.nbytes, chunks=sizes,
                            spec=entry.spec.model_copy(update={"files": files, "digest": digest}))
            with self.lock:
                twin = next((e for e in self.sets if e is not entry and e.layout and e.layout.key == key), None)
                if twin is None:
                    entry.layout, entry.load, entry.state = layout, report, "ready"
                else:  # the same bytes, placed the same, were resident under other paths: keep one copy
                    twin.fingerprints |= entry.fingerprints
                    entry.alias, entry.state = twin, "ready"
            if twin is not None:
                self._free(entry, locked=False)
        except BaseException as exc:
            entry.error = exc if isinstance(exc, ThawError) else GmsError(f"loading failed: {type(exc).__name__}: {exc}")
            entry.state = "failed"
            self._free(entry, locked=False)
        finally:
            entry.done.set()

    def _make_room(self, need: int, entry: ResidentSet) -> None:
        """Evict unheld sets, least recently used first, until ``need`` fits the budget and the device."""
        while True:
            with self.lock:
                resident = sum(e.bytes for e in self.sets if e is not entry)
                over_budget = self.budget is not None and resident + need > self.budget
                free = self.backend.free_bytes()
                short = free is not None and free < need
                if not over_budget and not short:
                    return
                idle = sorted((e for e in self.sets if e is not entry and e.state == "ready" and not e.holders),
                              key=lambda e: e.last_used)
                if not idle:
                    why = (f"the budget of {self.budget} bytes holds {resident} already" if over_budget
                           else f"the GPU has {free} bytes free")
                    raise GmsError(f"no room for a weight set of {need} bytes: {why}, and every resident set is "
                                   "mapped by a worker", code="out_of_memory",
                                   hint="raise the budget, stop workers, or use a GPU with more free memory")
                self._free(idle[0])

    def _free(self, entry: ResidentSet, *, locked: bool = True) -> None:
        """Unmap and release an entry's memory (imported copies in workers stay valid) and forget it."""
        if entry.base is not None:
            self.backend.unmap(entry.base, entry.chunks)
            entry.base = None
        for handle, _ in entry.chunks:
            self.backend.release(handle)
        entry.chunks = []
        if locked:
            if entry in self.sets:
                self.sets.remove(entry)
            self.changed.notify_all()
        else:
            with self.lock:
                if entry in self.sets:
                    self.sets.remove(entry)

    def _checked(self, spec: WeightSpec) -> WeightSpec:
        """The spec with every file resolved (symlinks followed once, here) and inside an allowed root."""
        files = []
        for f in spec.files:
            real = Path(os.path.realpath(f.path))
            if not any(real == root or root in real.parents for root in self.allow):
                raise GmsError(f"{f.path} is outside the directories this service may read "
                               f"({', '.join(map(str, self.allow))})", code="forbidden",
                               hint="start the service with --allow covering the model directory")
            if not real.is_file():
                raise GmsError(f"{f.path} is not a regular file", code="not_found")
            files.append(f.model_copy(update={"path": str(real)}))
        return spec.model_copy(update={"files": files})

    @staticmethod
    def _fingerprint(spec: WeightSpec) -> str:
        parts = []
        for f in spec.files:
            st = os.stat(f.path)
            parts.append(f"{f.path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts) + "|" + spec.placement()
