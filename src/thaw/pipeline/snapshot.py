"""``thaw snapshot``: quiesce → freeze hooks → GPU lock+checkpoint → CRIU dump → publish.

Nothing half-done is ever visible, and a failure leaves the worker running:

* CRIU always dumps with ``leave_running``: the original is killed only after the
  artifact is published, so a failed publish (name taken, disk full) loses nothing;
* after a failure past the freeze hooks, the GPU state is restored and unlocked and
  the worker is told to ABORT (its thaw hooks undo the freeze); it stays parked at its
  quiesce point, ready for another attempt;
* the artifact is staged and published by the store in one atomic step.

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

from thaw import __version__
from thaw.config import Settings
from thaw.criu import DumpOptions, dump, find_criu
from thaw.errors import BusyError, CheckpointError, ConfigError, CriuError, ThawError
from thaw.pipeline import control, gpu, http_canary, instances, io_uring, residual, sockets
from thaw.pipeline.instances import Instance
from thaw.pipeline.phases import Phases, Progress
from thaw.sandbox import netns, user
from thaw.sandbox.layout import Layout
from thaw.sandbox.pod import run_dir_of
from thaw.store import Manifest, Store, check_name, store_for
from thaw.store.manifest import (HttpCanary, HttpCanaryRequest, MemoryResidual, ReleasedMemory, SourceInfo,
                                 WeightSetRef, WorkerInfo)
from thaw.worker.protocol import Action

IMAGES = "images"


@dataclass
class SnapshotResult:
    manifest: Manifest
    timings: dict[str, float]
    instance: Instance


def snapshot(settings: Settings, worker: str, artifact: str, *, store: Store | None = None,
             leave_running: bool = False, ready_timeout: float = 60.0, reply_timeout: float = 120.0,
             canary_http: list[HttpCanaryRequest] | None = None, progress: Progress | None = None) -> SnapshotResult:
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
    phases = Phases(progress, operation="snapshot")
    with inst.operation(f"snapshot to {artifact}"):
        with phases("quiesce", "waiting for the worker's quiesce point"):
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
        with phases("freeze_hooks"):
            try:
                reply = control.send(inst, Action.FREEZE, timeout=reply_timeout)
            except ThawError as exc:
                raise CheckpointError(f"snapshot of {inst.name!r} failed in its freeze hooks: {exc}") from exc
        attempt = _Attempt()
        try:
            manifest = _capture(settings, inst, ready, reply.data, artifact, store, phases, attempt, tree,
                                canary_http=canary_http or [], reply_timeout=reply_timeout)
        except BaseException as exc:
            _roll_back(inst, attempt, reply_timeout)
            released = ("; the original was released to answer the HTTP canary and serves on"
                        if attempt.released else "")
            if isinstance(exc, CheckpointError | BusyError) and not released:
                raise
            if isinstance(exc, ThawError):
                raise CheckpointError(f"snapshot of {inst.name!r} failed: {exc.message}{released}",
                                      hint=exc.hint) from exc
            raise
        if leave_running and attempt.released:
            pass  # it serves already: it answered the HTTP canary
        elif leave_running:
            with phases("resume_original"):
                if attempt.gpu_pids:
                    gpu.rollback_tree(attempt.gpu_pids)
                control.send(inst, Action.RELEASE, timeout=reply_timeout, info={"artifact": artifact})
        else:
            with phases("stop_original"):
                inst.kill()
                inst.state = "snapshotted"
                inst.save()
    timings = phases.finish()
    # the manifest as published: its digest (over every field, timings too) is the one the store holds
    return SnapshotResult(manifest=manifest, timings=timings, instance=inst)


@dataclass
class _Attempt:
    """How far a capture got, so that a failure undoes exactly that much."""

    gpu_pids: list[int] = field(default_factory=list)  # host pids whose GPU state may be locked or checkpointed
    released: bool = False  # the original was let go (to answer the HTTP canary): it is no longer parked


def _capture(settings: Settings, inst: Instance, ready: Any, report: dict[str, Any], artifact: str,
             store: Store, phases: Phases, attempt: _Attempt, tree: Any, *, canary_http: list[HttpCanaryRequest],
             reply_timeout: float) -> Manifest:
    pid = inst.host_pid
    layout = Layout.from_dict(inst.layout)
    # the host decides (maps of /dev/nvidia*), not the worker's word: live GPU state must never reach CRIU
    gpu_pids = gpu.confirm_tree(tree)
    gpus = gpu.record_tree(pid, gpu_pids)
    criu = find_criu(settings.criu)
    before_lock = residual.census(pid)
    with store.stage(artifact) as staged:
        if gpu_pids:
            # order matters: the device state must be in host memory before CRIU reads that memory
            attempt.gpu_pids = gpu_pids  # set first: a lock that succeeded before a failure needs undoing too
            with phases("gpu_checkpoint", "CUDA lock + checkpoint"):
                gpu_timings = gpu.checkpoint_tree(gpu_pids)
            phases.timings.update(gpu_timings)
        memory = MemoryResidual(before_lock=before_lock, after_checkpoint=residual.census(pid) if gpus else None)
        stdio = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (1, 2)]
        op_dir = inst.dir / "ops" / f"snapshot-{staged.artifact_id[:8]}"
        with phases("dump", "CRIU dump"):
            try:
                dump(DumpOptions(pid=pid, images_dir=staged.dir / IMAGES, work_dir=op_dir, leave_running=True,
                                 external=layout.dump_externals() + [netns.dump_external(pid)]),
                     criu=criu)
            except CriuError as exc:
                raise sockets.explain_dump_failure(inst.name, exc, op_dir / "dump.log") or exc from exc
        _check_images(staged.dir / IMAGES)
        http: HttpCanary | None = None
        if canary_http:
            with phases("canary_record", "the original answers the HTTP canary"):
                http = _record_http_canary(inst, ready, canary_http, attempt, reply_timeout)
        staged.published = Manifest(
            artifact_id=staged.artifact_id,
            name=artifact,
            source=SourceInfo(host=settings.node, kernel=os.uname().release, criu_version=criu.version,
                              thaw_version=__version__, **gpu.identity()),
            worker=WorkerInfo(name=inst.name, argv=inst.argv, pid=pid, canary=ready.canary, hooks=ready.hooks,
                              freeze_report=report, serves=ready.serves, http_canary=http),
            sandbox={**layout.to_dict(), "net_key": netns.NET_KEY, "stdio": sorted(set(stdio)),
                     **({"run_dir": run_dir_of(pid)} if inst.anchor_pid else {})},  # a pod's: see placement.in_pod
            gpus=gpus,
            gpu_pids=gpu.namespace_pids(gpu_pids),
            memory_released=[ReleasedMemory(**r) for r in _released(report)],
            weights=_weight_sets(report),
            residual=memory,
            timings=dict(phases.timings),
        )
        phases.progress("publish", None, f"publishing to {store.url}")
        t_publish = time.perf_counter()
    phases.add("publish", time.perf_counter() - t_publish)  # the store publishes as the stage block ends
    assert staged.published is not None
    return staged.published


def _check_images(images: Path) -> None:
    """CRIU reported success; an empty images directory would still be no snapshot at all."""
    if not images.is_dir() or not any(p.is_file() for p in images.iterdir()):
        raise CheckpointError(f"CRIU dump produced no image files in {images}: nothing to publish",
                              hint="see the CRIU log in the worker's ops directory")


def _record_http_canary(inst: Instance, ready: Any, requests: list[HttpCanaryRequest], attempt: _Attempt,
                        timeout: float) -> HttpCanary:
    """Let the original go (its GPU state back, RELEASE), then record what it answers to ``requests``."""
    if attempt.gpu_pids:
        gpu.rollback_tree(attempt.gpu_pids)
        attempt.gpu_pids = []
    control.send(inst, Action.RELEASE, timeout=timeout, info={"reason": "answering the HTTP canary"})
    attempt.released = True
    return http_canary.record(ready.serves, inst.host_pid, requests)


def _roll_back(inst: Instance, attempt: _Attempt, timeout: float) -> None:
    """After a failed capture: GPU back to running, freeze undone; the worker stays parked (unless released)."""
    if not inst.alive() or attempt.released:
        return
    if attempt.gpu_pids:
        try:
            gpu.rollback_tree(attempt.gpu_pids)
        except ThawError:
            pass  # the ABORT below then fails too, and the error the caller sees stays the original one
    try:
        control.send(inst, Action.ABORT, timeout=timeout)
    except ThawError:
        pass


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
        if any(f.digest is None for f in s.spec.files):
            raise CheckpointError(f"the worker reported weight set {s.key} without file digests")
        refs.append(WeightSetRef(key=s.key, digest=s.digest, bytes=s.bytes, device=s.device,
                                 files=[{"path": f.path, "size": f.size, "digest": f.digest} for f in s.spec.files],
                                 order=s.spec.order, align=s.spec.align))
    return refs


def _released(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for hook in report.values() if isinstance(hook, dict) for r in hook.get("released", [])]
