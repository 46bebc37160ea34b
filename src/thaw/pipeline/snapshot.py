"""``thaw snapshot``: quiesce → freeze hooks → GPU lock+checkpoint → CRIU dump → publish.

Nothing half-done is ever visible, and a failure leaves the worker running:

* CRIU always dumps with ``leave_running``: the original is killed only after the
  artifact is published, so a failed publish (name taken, disk full) loses nothing;
* after a failure past the freeze hooks, the GPU state is restored and unlocked and
  the worker is told to ABORT (its thaw hooks undo the freeze); it stays parked at its
  quiesce point, ready for another attempt;
* the artifact is staged and published by the store in one atomic step;
* the attempt is recorded on the worker's instance (owner, staged artifact, phases, GPU
  processes) until it ends: if this process dies without unwinding, recovery.py undoes
  exactly what it did.

With an HTTP canary (``--canary-http``) the original is let go right after the dump
(its GPU state restored, RELEASE) and answers the canary requests; their answers go
into the manifest, which is published only then. The original keeps serving with
``--leave-running`` and is stopped otherwise; if recording fails, nothing is
published and the original, released already, goes on serving.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thaw import __version__, proc
from thaw.config import Settings
from thaw.criu import DumpOptions, dump, find_criu
from thaw.errors import BusyError, CheckpointError, ConfigError, CriuError, ThawError
from thaw.model import (
    Manifest,
    MemoryResidual,
    Phase,
    ReleasedMemory,
    SandboxRecord,
    SourceInfo,
    Timings,
    WeightFileRef,
    WeightSetRef,
    WorkerInfo,
    check_name,
)
from thaw.model.manifest import HttpCanary, HttpCanaryRequest
from thaw.pipeline import control, gpu, http_canary, instances, io_uring, recovery, residual, sockets
from thaw.pipeline.instances import Instance, SnapshotAttempt
from thaw.pipeline.phases import Phases, Progress
from thaw.sandbox import netns, user
from thaw.sandbox.pod import run_dir_of
from thaw.store import Store, store_for
from thaw.worker.protocol import Action

IMAGES = "images"


@dataclass
class Snapshot:
    """What a snapshot made: the published artifact's manifest, the phase timings, the original worker."""

    #: as published: its digest (over every field, its timings too) is the one the store holds
    manifest: Manifest
    timings: Timings
    instance: Instance
    #: what the store measured while publishing (bytes, seconds, write_gbps, ...)
    store_stats: dict[str, float] = field(default_factory=dict)


def snapshot(settings: Settings, worker: str, artifact: str, *, store: Store | None = None,
             leave_running: bool = False, ready_timeout: float = 60.0, reply_timeout: float = 120.0,
             canary_http: list[HttpCanaryRequest] | None = None, progress: Progress | None = None) -> Snapshot:
    """Snapshot the worker named (or with id) ``worker`` into the artifact ``artifact``.

    ``canary_http``: requests the original answers after the dump; every restored copy
    must answer them the same (thaw.pipeline.http_canary).
    """
    check_name(artifact)
    store = store or store_for(settings)
    inst = instances.find(settings, worker)
    if store.exists(artifact):
        raise BusyError(f"an artifact named {artifact!r} already exists in {store.url}",
                        hint="pick another name, or `thaw rm` the old one first")
    with inst.operation(f"snapshot to {artifact}"):
        # recorded until done: if this process dies, recovery.py knows what to undo
        inst.snapshotting = attempt = SnapshotAttempt(owner_pid=os.getpid(), artifact=artifact,
                                                      leave_running=leave_running)
        inst.save()
        try:
            phases = Phases(_recorded(inst, progress), operation="snapshot")
            manifest, stats = _freeze_and_capture(settings, inst, artifact, store, phases, ready_timeout,
                                                  reply_timeout, canary_http or [])
            if leave_running and attempt.released:
                pass  # it serves already: it answered the HTTP canary
            elif leave_running:
                with phases(Phase.RESUME_ORIGINAL):
                    if attempt.gpu_pids:
                        gpu.rollback_tree(attempt.gpu_pids)
                    control.send(inst, Action.RELEASE, timeout=reply_timeout, info={"artifact": artifact})
            else:
                with phases(Phase.STOP_ORIGINAL):
                    inst.kill()
                    inst.state = "snapshotted"
        finally:
            inst.snapshotting = None
            inst.save()
    return Snapshot(manifest=manifest, timings=phases.finish(), instance=inst, store_stats=stats)


def _freeze_and_capture(settings: Settings, inst: Instance, artifact: str, store: Store, phases: Phases,
                        ready_timeout: float, reply_timeout: float, canary_http: list[HttpCanaryRequest],
                        ) -> tuple[Manifest, dict[str, float]]:
    with phases(Phase.QUIESCE, "waiting for the worker's quiesce point"):
        ready = control.wait_ready(inst, ready_timeout)
    if canary_http and not ready.serves:
        raise ConfigError("canary-http", f"worker {inst.name!r} did not say where it serves, so thaw cannot send it "
                          "the HTTP canary", hint="run it with --park-at-listen, or pass serves= to "
                          "thaw.worker.quiesce(); nothing was frozen")
    # before the freeze: every process of the tree that holds the GPU, and a refusal naming any CRIU could not dump
    tree = gpu.plan_tree(inst.host_pid, ready.pid, ready.hooks)
    sockets.refuse_inet(inst.name, inst.host_pid)
    io_uring.refuse_io_uring(inst.name, inst.host_pid)
    if why := user.refusal(inst.name, inst.host_pid):
        raise CheckpointError(f"snapshot of {inst.name!r} refused: {why}", hint="grant thaw (the agent) "
                              "CAP_SYS_RESOURCE, as deploy/kubernetes does, or run workers as root (unset "
                              "THAW_WORKER_USER); nothing was frozen")
    with phases(Phase.FREEZE_HOOKS):
        try:
            reply = control.send(inst, Action.FREEZE, timeout=reply_timeout)
        except ThawError as exc:
            raise CheckpointError(f"snapshot of {inst.name!r} failed in its freeze hooks: {exc}") from exc
    attempt = inst.snapshotting
    assert attempt is not None  # snapshot() recorded it
    try:
        return _capture(settings, inst, ready, reply.data, artifact, store, phases, attempt, tree,
                        canary_http=canary_http, reply_timeout=reply_timeout)
    except BaseException as exc:
        if not attempt.released:  # a released original serves on: nothing to undo
            recovery.roll_back(inst, gpu_pids=attempt.gpu_pids, timeout=reply_timeout)
        released = "; the original was released to answer the HTTP canary and serves on" if attempt.released else ""
        if isinstance(exc, CheckpointError | BusyError) and not released:
            raise
        if isinstance(exc, ThawError):
            raise CheckpointError(f"snapshot of {inst.name!r} failed: {exc.message}{released}",
                                  hint=exc.hint) from exc
        raise


def _recorded(inst: Instance, progress: Progress | None) -> Progress:
    """Progress that also records each phase in the instance's snapshot attempt before the phase runs."""

    def report(phase: str, fraction: float | None, detail: str) -> None:
        attempt = inst.snapshotting
        if attempt is not None and phase not in attempt.phases:
            attempt.phases.append(phase)
            inst.save()
        if progress is not None:
            progress(phase, fraction, detail)

    return report


def _capture(settings: Settings, inst: Instance, ready: Any, report: dict[str, Any], artifact: str,
             store: Store, phases: Phases, attempt: SnapshotAttempt, tree: Any, *,
             canary_http: list[HttpCanaryRequest], reply_timeout: float) -> tuple[Manifest, dict[str, float]]:
    pid = inst.host_pid
    layout = inst.layout
    # the host decides (maps of /dev/nvidia*), not the worker's word: live GPU state must never reach CRIU
    gpu_pids = gpu.confirm_tree(tree)
    gpus = gpu.record_tree(pid, gpu_pids)
    criu = find_criu(settings.criu)
    before_lock = residual.census(pid)
    with store.stage(artifact) as staged:
        attempt.artifact_id, attempt.staged_dir = staged.artifact_id, str(staged.dir)
        inst.save()
        if gpu_pids:
            # order matters: the device state must be in host memory before CRIU reads that memory.
            # Recorded first: a lock that succeeded before a failure needs undoing too.
            attempt.gpu_pids = gpu_pids
            inst.save()
            with phases(Phase.GPU_CHECKPOINT, "CUDA lock + checkpoint"):
                gpu_timings = gpu.checkpoint_tree(gpu_pids)
            phases.parts(Phase.GPU_CHECKPOINT, gpu_timings)
        memory = MemoryResidual(before_lock=before_lock, after_checkpoint=residual.census(pid) if gpus else None)
        stdio = [proc.fd_target(pid, fd) for fd in (1, 2)]
        op_dir = inst.dir / "ops" / f"snapshot-{staged.artifact_id[:8]}"
        with phases(Phase.DUMP, "CRIU dump"):
            try:
                dump(DumpOptions(pid=pid, images_dir=staged.dir / IMAGES, work_dir=op_dir, leave_running=True,
                                 external=layout.dump_externals() + [netns.dump_external(pid)]),
                     criu=criu)
            except CriuError as exc:
                raise sockets.explain_dump_failure(inst.name, exc, op_dir / "dump.log") or exc from exc
        _check_images(staged.dir / IMAGES)
        http: HttpCanary | None = None
        if canary_http:
            with phases(Phase.CANARY_RECORD, "the original answers the HTTP canary"):
                http = _record_http_canary(inst, ready, canary_http, attempt, reply_timeout)
        staged.published = Manifest(
            artifact_id=staged.artifact_id,
            name=artifact,
            source=SourceInfo(host=settings.node, kernel=os.uname().release, criu_version=criu.version,
                              thaw_version=__version__, **gpu.identity()),
            worker=WorkerInfo(name=inst.name, argv=inst.argv, pid=pid, canary=ready.canary, hooks=ready.hooks,
                              freeze_report=report, serves=ready.serves, http_canary=http),
            sandbox=SandboxRecord(**layout.model_dump(), net_key=netns.NET_KEY, stdio=sorted(set(stdio)),
                                  run_dir=run_dir_of(pid) if inst.anchor_pid else None),  # see placement.in_pod
            gpus=gpus,
            gpu_pids=gpu.namespace_pids(gpu_pids),
            memory_released=[ReleasedMemory(**r) for r in _released(report)],
            weights=_weight_sets(report),
            residual=memory,
            timings=phases.so_far().flat(totals=False),
        )
        phases.progress(Phase.PUBLISH.value, None, f"publishing to {store.url}")
        t_publish = time.perf_counter()
    phases.add(Phase.PUBLISH, time.perf_counter() - t_publish)  # the store publishes as the stage block ends
    assert staged.published is not None
    return staged.published, dict(staged.stats)


def _check_images(images: Path) -> None:
    """CRIU reported success; an empty images directory would still be no snapshot at all."""
    if not images.is_dir() or not any(p.is_file() for p in images.iterdir()):
        raise CheckpointError(f"CRIU dump produced no image files in {images}: nothing to publish",
                              hint="see the CRIU log in the worker's ops directory")


def _record_http_canary(inst: Instance, ready: Any, requests: list[HttpCanaryRequest], attempt: SnapshotAttempt,
                        timeout: float) -> HttpCanary:
    """Let the original go (its GPU state back, RELEASE), then record what it answers to ``requests``."""
    if attempt.gpu_pids:
        gpu.rollback_tree(attempt.gpu_pids)
        attempt.gpu_pids = []
    control.send(inst, Action.RELEASE, timeout=timeout, info={"reason": "answering the HTTP canary"})
    attempt.released = True
    inst.save()
    return http_canary.record(ready.serves, inst.host_pid, requests)


def _weight_sets(report: dict[str, Any]) -> list[WeightSetRef]:
    """The weight sets the worker unmapped from the node's GPU memory service (its weights hook's freeze report)."""
    from pydantic import ValidationError

    from thaw.gms.models import WEIGHTS_HOOK, FrozenWeights

    raw = report.get(WEIGHTS_HOOK)
    if raw is None:
        return []
    try:
        frozen = FrozenWeights.model_validate(raw)
    except ValidationError as exc:
        raise CheckpointError(f"the worker's weights hook reported something thaw cannot read: "
                              f"{exc.errors()[0]['msg']}") from None
    refs = []
    for s in frozen.sets:
        files = [WeightFileRef(path=f.path, size=f.size, digest=f.digest) for f in s.spec.files if f.digest is not None]
        if len(files) != len(s.spec.files):
            raise CheckpointError(f"the worker reported weight set {s.key} without file digests")
        refs.append(WeightSetRef(key=s.key, digest=s.digest, bytes=s.bytes, device=s.device, files=files,
                                 order=s.spec.order, align=s.spec.align))
    return refs


def _released(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for hook in report.values() if isinstance(hook, dict) for r in hook.get("released", [])]
