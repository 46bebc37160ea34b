"""``thaw restore``: verify → CRIU restore in fresh namespaces → CUDA restore → unlock → thaw hooks → canary → go.

A worker snapshotted with an HTTP canary is let go and must then answer the recorded
requests as the original did (pipeline/http_canary.py) before it counts as running.

A failure at any step kills what was restored and leaves the artifact untouched
(restore only ever reads it). Each restore gets new pid, mount and network
namespaces, so the same artifact can be restored many times at once on one node.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thaw.config import Settings
from thaw.criu import RestoreOptions, find_criu
from thaw.criu import restore as criu_restore
from thaw.errors import CanaryMismatch, RestoreError, ThawError
from thaw.model import GpuPair, GpuTarget, Manifest, Phase, SandboxLayout, Timings, check_name
from thaw.pipeline import canary, control, gpu, http_canary, instances, placement
from thaw.pipeline.instances import Instance
from thaw.pipeline.phases import Phases, Progress
from thaw.pipeline.snapshot import IMAGES
from thaw.sandbox import user
from thaw.sandbox.pod import Anchor
from thaw.store import Store, store_for
from thaw.worker import protocol
from thaw.worker.protocol import Action

PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Restored:
    """A restored worker, running: its instance, the artifact's manifest, the timings, the canary it reproduced."""

    instance: Instance
    manifest: Manifest
    timings: Timings
    #: what the store measured while fetching (bytes, seconds, read_gbps, ...)
    store_stats: dict[str, float] = field(default_factory=dict)
    canary_expected: Any = None
    canary_got: Any = None
    thaw_report: dict[str, Any] = field(default_factory=dict)
    #: the answers the copy gave to the HTTP canary (None: the artifact has none, or it was not checked)
    http_canary_got: list[Any] | None = None

    @property
    def canary_checked(self) -> bool:
        return self.canary_expected is not None or self.http_canary_got is not None


def restore(settings: Settings, artifact: str, *, store: Store | None = None, gpu_target: GpuTarget | None = None,
            name: str | None = None, verify_canary: bool = True, reply_timeout: float = 120.0,
            expected_digest: str | None = None, progress: Progress | None = None,
            into: Anchor | None = None) -> Restored:
    """Restore ``artifact`` as a new worker on this node; returns once it runs (and passed its canary).

    With ``expected_digest`` only that exact artifact is restored (UntrustedArtifact otherwise),
    checked before anything is fetched; the store's trust settings may also require a signature.
    ``into``: restore inside the pod of that thaw entrypoint (its network namespace, cgroup and
    root filesystem, pipeline/placement.py) instead of a fresh sandbox.
    """
    check_name(artifact)
    store = store or store_for(settings)
    phases = Phases(progress, operation="restore")
    with phases(Phase.FETCH, f"fetching and verifying {artifact}"):
        fetched = store.fetch(artifact, settings.staging_dir, expected_digest=expected_digest)
    try:
        manifest = fetched.manifest
        # the store's own steps happened inside the fetch
        phases.parts(Phase.FETCH, {f"fetch_{k}": v for k, v in fetched.stats.items() if k.endswith("_s")})
        with phases(Phase.PLAN):
            pairs = gpu.plan_gpu_pairs(manifest.gpus, gpu_target)  # refuses before anything is touched
            layout = manifest.sandbox.layout  # validated with the manifest: it may come from anyone who can write
        # "restoring" until the copy passed its canary: recovery.py kills it if we die before
        inst = instances.create(settings, name or manifest.worker.name, argv=manifest.worker.argv,
                                origin="restored", artifact=artifact, layout=layout,
                                state="restoring", owner_pid=os.getpid())
        with inst.operation("restore"):  # held like every operation on a worker: no stop under our feet
            try:
                restored = _bring_up(settings, inst, manifest, fetched.dir, layout, pairs, verify_canary,
                                     reply_timeout, phases, into)
            except BaseException as exc:
                inst.kill()
                inst.state = "failed"
                inst.save()
                if isinstance(exc, RestoreError):
                    raise
                if isinstance(exc, ThawError):
                    raise RestoreError(f"restore of {artifact!r} failed: {exc}") from exc
                raise
        restored.store_stats = dict(fetched.stats)
        return restored
    finally:
        fetched.cleanup()


def _bring_up(settings: Settings, inst: Instance, manifest: Manifest, artifact_dir: Path, layout: SandboxLayout,
              pairs: list[GpuPair], verify_canary: bool, reply_timeout: float, phases: Phases,
              into: Anchor | None = None) -> Restored:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    _become_subreaper()
    if manifest.weights:
        with phases(Phase.WEIGHTS_PREFETCH, "asking the GPU memory service for the weights"):
            _prefetch_weights(settings, manifest, pairs)
    net_key = manifest.sandbox.net_key
    if into is None:
        place = placement.fresh(settings, manifest, inst, net_key)
    else:
        with phases(Phase.JOIN_POD, f"joining the pod of entrypoint {into.pid}"):
            place = placement.in_pod(settings, manifest, inst, net_key, into)
    inst.netns = place.netns  # names the copy before its pid is known (Instance.kill)
    inst.save()
    try:
        with phases(Phase.CRIU_RESTORE, "CRIU restore"):
            pid, _ = criu_restore(
                RestoreOptions(images_dir=artifact_dir / IMAGES, work_dir=inst.dir / "ops" / "restore",
                               root=place.root, external=layout.restore_externals(), inherit_fds=place.fds,
                               join_ns=place.join_ns, wrapper=place.wrapper),
                criu=find_criu(settings.criu),
            )
    except BaseException:
        # Interrupted while CRIU worked (Ctrl-C, SIGTERM), CRIU still finishes the tree. Kill it now,
        # while we hold its network namespace: until we close it, no other namespace can have its inode.
        inst.kill()
        raise
    finally:
        place.close()
    inst.host_pid, inst.pidns, inst.ns_key = pid, protocol.pidns_inode(pid), protocol.sandbox_key(pid)
    inst.save()  # before anything can fail: `recover` needs the pid to kill
    uid, gid = user.of_process(pid)
    if uid != 0 and into is None:  # CRIU gave it back its unprivileged user: it may add files to its control dir only
        user.hand_over(inst.dir, inst.log, uid, gid)
    protocol.link_sandbox(place.run_dir, inst.ns_key, place.control_target)
    if manifest.gpus:
        with phases(Phase.GPU_RESTORE, "CUDA restore + unlock"):
            gpu_timings = gpu.restore_tree(pid, manifest.gpu_pids, pairs)
        phases.parts(Phase.GPU_RESTORE, gpu_timings)
    expected = manifest.worker.canary if verify_canary else None
    info = {"restore_id": inst.id, "artifact": manifest.name, "artifact_id": manifest.artifact_id,
            "node": settings.node, "timings": phases.so_far().flat(totals=False)}
    with phases(Phase.THAW_HOOKS):
        reply = control.send(inst, Action.THAW, timeout=reply_timeout, info=info, verify=expected is not None)
    if expected is not None:
        got = reply.canary
        if not canary.matches(expected, got):
            raise CanaryMismatch(
                f"restored worker {inst.id!r} does not reproduce the canary recorded in {manifest.name!r}: "
                f"expected {canary.short(expected)}, got {canary.short(got)}",
                expected=expected, got=got,
            )
        with phases(Phase.GO):
            control.send(inst, Action.GO, timeout=reply_timeout, info={"canary": "passed"})
    http_got = None
    if verify_canary and manifest.worker.http_canary is not None:
        # let go, it binds its socket in this copy's network namespace; it counts as running once it answers alike
        with phases(Phase.CANARY_HTTP, "the restored worker answers the HTTP canary"):
            http_got = http_canary.check(manifest.worker.http_canary, pid, who=f"restored worker {inst.id!r}")
    inst.state, inst.owner_pid = "running", 0
    inst.save()
    timings = phases.finish()
    return Restored(instance=inst, manifest=manifest, timings=timings, canary_expected=expected,
                    canary_got=reply.canary, thaw_report=reply.data, http_canary_got=http_got)


def _prefetch_weights(settings: Settings, manifest: Manifest, pairs: list[GpuPair]) -> None:
    """Have each weight set made resident on the GPU this copy will run on, while CRIU restores the process.

    Returns at once: the service loads in the background (or already holds the set), and the
    worker's thaw hook waits for it and maps it. So a restore costs max(CRIU + CUDA, load),
    not the sum. Refuses here, before anything is restored, when no service answers or
    the service will not serve these files.
    """
    from thaw.errors import GmsError, GmsUnavailable
    from thaw.gms import Client, WeightFile, WeightSpec

    moved = {p.old: p.new for p in pairs}
    for ref in manifest.weights:
        device = moved.get(ref.device, ref.device)
        spec = WeightSpec(files=[WeightFile(path=f.path, size=f.size, digest=f.digest) for f in ref.files],
                          order=ref.order, align=ref.align, digest=ref.digest)
        try:
            with Client.for_device(settings.gms_dir, device, timeout=30) as client:
                client.prefetch(spec, wait=False)
        except GmsUnavailable as exc:
            raise RestoreError(f"this artifact's weights ({ref.bytes / 2**30:.2f} GiB) come from a GPU memory "
                               f"service, and none answers for {device} on this node: {exc.message}",
                               hint=exc.hint) from exc
        except GmsError as exc:
            raise RestoreError(f"the GPU memory service for {device} refused this artifact's weights: "
                               f"{exc.message}", hint=exc.hint) from exc


def _become_subreaper() -> None:
    # restored trees are re-parented to us, not to init, if an intermediate CRIU process exits
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
