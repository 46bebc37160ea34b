"""``thaw snapshot``: quiesce → freeze hooks → GPU lock+checkpoint → CRIU dump → publish.

Nothing half-done is ever visible, and a failure leaves the worker running:

* CRIU always dumps with ``leave_running``: the original is killed only after the
  artifact is published, so a failed publish (name taken, disk full) loses nothing;
* after a failure past the freeze hooks, the GPU state is restored and unlocked and
  the worker is told to ABORT (its thaw hooks undo the freeze); it stays parked at its
  quiesce point, ready for another attempt;
* the artifact is staged and published by the store in one atomic step.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from thaw import __version__, proc
from thaw.config import Settings
from thaw.criu import DumpOptions, dump, find_criu
from thaw.errors import BusyError, CheckpointError, ThawError
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
from thaw.pipeline import control, gpu, instances, recovery, residual
from thaw.pipeline.instances import Instance, SnapshotAttempt
from thaw.pipeline.phases import Phases, Progress
from thaw.sandbox import netns
from thaw.store import Store, open_store
from thaw.worker.protocol import Action

IMAGES = "images"


@dataclass
class Snapshot:
    """What a snapshot made: the published artifact's manifest, the phase timings, the original worker."""

    manifest: Manifest
    timings: Timings
    instance: Instance
    #: what the store measured while publishing (bytes, seconds, write_gbps, ...)
    store_stats: dict[str, float] = field(default_factory=dict)


def snapshot(settings: Settings, worker: str, artifact: str, *, store: Store | None = None,
             leave_running: bool = False, ready_timeout: float = 60.0, reply_timeout: float = 120.0,
             progress: Progress | None = None) -> Snapshot:
    """Snapshot the worker named (or with id) ``worker`` into the artifact ``artifact``."""
    check_name(artifact)
    store = store or open_store(settings.store_url)
    inst = instances.find(settings, worker)
    if store.exists(artifact):
        raise BusyError(f"an artifact named {artifact!r} already exists in {store.url}",
                        hint="pick another name, or `thaw rm` the old one first")
    with inst.operation(f"snapshot to {artifact}"):
        # recorded until done: if this process dies, recovery.py knows what to undo
        inst.snapshotting = SnapshotAttempt(owner_pid=os.getpid(), artifact=artifact, leave_running=leave_running)
        inst.save()
        try:
            phases = Phases(_recorded(inst, progress))
            manifest, stats = _freeze_and_capture(settings, inst, artifact, store, phases, ready_timeout,
                                                  reply_timeout)
            if leave_running:
                with phases(Phase.RESUME_ORIGINAL):
                    if manifest.gpus:
                        gpu.rollback_gpu(inst.host_pid)
                    control.send(inst, Action.RELEASE, timeout=reply_timeout, info={"artifact": artifact})
            else:
                with phases(Phase.STOP_ORIGINAL):
                    inst.kill()
                    inst.state = "snapshotted"
        finally:
            inst.snapshotting = None
            inst.save()
    timings = phases.finish()
    return Snapshot(manifest=manifest.model_copy(update={"timings": {**manifest.timings, **timings.flat()}}),
                    timings=timings, instance=inst, store_stats=stats)


def _freeze_and_capture(settings: Settings, inst: Instance, artifact: str, store: Store, phases: Phases,
                        ready_timeout: float, reply_timeout: float) -> tuple[Manifest, dict[str, float]]:
    with phases(Phase.QUIESCE, "waiting for the worker's quiesce point"):
        ready = control.wait_ready(inst, ready_timeout)
    with phases(Phase.FREEZE_HOOKS):
        try:
            reply = control.send(inst, Action.FREEZE, timeout=reply_timeout)
        except ThawError as exc:
            raise CheckpointError(f"snapshot of {inst.name!r} failed in its freeze hooks: {exc}") from exc
    try:
        return _capture(settings, inst, ready, reply.data, artifact, store, phases)
    except BaseException as exc:
        attempt = inst.snapshotting
        recovery.roll_back(inst, gpu_checkpointed=attempt is not None and Phase.GPU_CHECKPOINT.value in attempt.phases,
                           timeout=reply_timeout)
        if isinstance(exc, CheckpointError | BusyError):
            raise
        if isinstance(exc, ThawError):
            raise CheckpointError(f"snapshot of {inst.name!r} failed: {exc}") from exc
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
             store: Store, phases: Phases) -> tuple[Manifest, dict[str, float]]:
    pid = inst.host_pid
    layout = inst.layout
    # the host decides (maps of /dev/nvidia*), not the worker's word: live GPU state must never reach CRIU
    gpus = gpu.record_gpus(pid) if gpu.uses_gpu(pid) else []
    criu = find_criu(settings.criu)
    before_lock = residual.census(pid)
    with store.stage(artifact) as staged:
        if inst.snapshotting is not None:
            inst.snapshotting.artifact_id, inst.snapshotting.staged_dir = staged.artifact_id, str(staged.dir)
            inst.save()
        if gpus:
            # order matters: the device state must be in host memory before CRIU reads that memory.
            # The phase is recorded as it starts: a lock that succeeded before a failure is undone too.
            with phases(Phase.GPU_CHECKPOINT, "CUDA lock + checkpoint"):
                gpu_timings = gpu.checkpoint_gpu(pid)
            phases.parts(Phase.GPU_CHECKPOINT, gpu_timings)
        memory = MemoryResidual(before_lock=before_lock, after_checkpoint=residual.census(pid) if gpus else None)
        stdio = [proc.fd_target(pid, fd) for fd in (1, 2)]
        op_dir = inst.dir / "ops" / f"snapshot-{staged.artifact_id[:8]}"
        with phases(Phase.DUMP, "CRIU dump"):
            dump(DumpOptions(pid=pid, images_dir=staged.dir / IMAGES, work_dir=op_dir, leave_running=True,
                             external=layout.dump_externals() + [netns.dump_external(pid)]),
                 criu=criu)
        staged.published = Manifest(
            artifact_id=staged.artifact_id,
            name=artifact,
            source=SourceInfo(host=settings.node, kernel=os.uname().release, criu_version=criu.version,
                              thaw_version=__version__, **gpu.identity()),
            worker=WorkerInfo(name=inst.name, argv=inst.argv, pid=pid, canary=ready.canary, hooks=ready.hooks,
                              freeze_report=report),
            sandbox=SandboxRecord(**layout.model_dump(), net_key=netns.NET_KEY, stdio=sorted(set(stdio))),
            gpus=gpus,
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
