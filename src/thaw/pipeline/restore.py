"""``thaw restore``: verify → CRIU restore in fresh namespaces → CUDA restore → unlock → thaw hooks → canary → go.

A worker snapshotted with an HTTP canary is let go and must then answer the recorded
requests as the original did (pipeline/http_canary.py) before it counts as running.

A failure at any step kills what was restored and leaves the artifact untouched
(restore only ever reads it). Each restore gets new pid, mount and network
namespaces, so the same artifact can be restored many times at once on one node.
"""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thaw.config import Settings
from thaw.criu import RestoreOptions, find_criu, restore as criu_restore
from thaw.errors import CanaryMismatch, IntegrityError, RestoreError, ThawError
from thaw.pipeline import control, gpu, http_canary, instances, placement
from thaw.pipeline.instances import Instance
from thaw.pipeline.phases import Phases, Progress
from thaw.pipeline.snapshot import IMAGES
from thaw.sandbox import netns, user
from thaw.sandbox.layout import Layout
from thaw.sandbox.pod import Anchor
from thaw.store import Manifest, Store, check_name, store_for
from thaw.worker import protocol
from thaw.worker.protocol import Action

PR_SET_CHILD_SUBREAPER = 36


@dataclass
class RestoreResult:
    instance: Instance
    manifest: Manifest
    timings: dict[str, float]
    canary_expected: Any = None
    canary_got: Any = None
    thaw_report: dict[str, Any] = field(default_factory=dict)
    #: the answers the copy gave to the HTTP canary (None: the artifact has none, or it was not checked)
    http_canary_got: list[Any] | None = None

    @property
    def canary_checked(self) -> bool:
        return self.canary_expected is not None or self.http_canary_got is not None


def restore(settings: Settings, artifact: str, *, store: Store | None = None, gpu_target: int | str | None = None,
            name: str | None = None, verify_canary: bool = True, reply_timeout: float = 120.0,
            expected_digest: str | None = None, progress: Progress | None = None,
            into: Anchor | None = None) -> RestoreResult:
    """Restore ``artifact`` as a new worker on this node; returns once it runs (and passed its canary).

    With ``expected_digest`` only that exact artifact is restored (UntrustedArtifact otherwise),
    checked before anything is fetched; the store's trust settings may also require a signature.
    ``into``: restore inside the pod of that thaw entrypoint (its network namespace, cgroup and
    root filesystem, pipeline/placement.py) instead of a fresh sandbox.
    """
    check_name(artifact)
    store = store or store_for(settings)
    phases = Phases(progress, operation="restore")
    with phases("fetch", f"fetching and verifying {artifact}"):
        fetched = store.fetch(artifact, settings.staging_dir, expected_digest=expected_digest)
    try:
        manifest = fetched.manifest
        phases.timings.update({f"fetch_{k}": v for k, v in fetched.stats.items() if k.endswith("_s")})
        with phases("plan"):
            pairs = gpu.plan(manifest.gpus, gpu_target)  # refuses before anything is touched
            layout = _layout(manifest)
        # "restoring" until the copy passed its canary: `recover` kills it if we die before (instances.py)
        inst = instances.create(settings, name or manifest.worker.name, argv=manifest.worker.argv,
                                origin="restored", artifact=artifact, layout=layout.to_dict(),
                                state="restoring", owner_pid=os.getpid())
        try:
            return _bring_up(settings, inst, manifest, fetched.dir, layout, pairs, verify_canary, reply_timeout,
                             phases, into)
        except BaseException as exc:
            inst.kill()
            inst.state = "failed"
            inst.save()
            if isinstance(exc, RestoreError):
                raise
            if isinstance(exc, ThawError):
                raise RestoreError(f"restore of {artifact!r} failed: {exc}") from exc
            raise
    finally:
        fetched.cleanup()


def _bring_up(settings: Settings, inst: Instance, manifest: Manifest, artifact_dir: Path, layout: Layout,
              pairs: Any, verify_canary: bool, reply_timeout: float, phases: Phases,
              into: Anchor | None = None) -> RestoreResult:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    _become_subreaper()
    if manifest.weights:
        with phases("weights_prefetch", "asking the GPU memory service for the weights"):
            _prefetch_weights(settings, manifest, pairs)
    net_key = manifest.sandbox.get("net_key", netns.NET_KEY)
    if into is None:
        place = placement.fresh(settings, manifest, inst, net_key)
    else:
        with phases("join_pod", f"joining the pod of entrypoint {into.pid}"):
            place = placement.in_pod(settings, manifest, inst, net_key, into)
    inst.netns = place.netns  # names the copy before its pid is known (Instance.kill)
    inst.save()
    try:
        with phases("criu_restore", "CRIU restore"):
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
        with phases("gpu_restore", "CUDA restore + unlock"):
            gpu_timings = gpu.restore_tree(pid, manifest.gpu_pids, pairs)
        phases.timings.update(gpu_timings)
    expected = manifest.worker.canary if verify_canary else None
    info = {"restore_id": inst.id, "artifact": manifest.name, "artifact_id": manifest.artifact_id,
            "node": settings.node, "timings": dict(phases.timings)}
    with phases("thaw_hooks"):
        reply = control.send(inst, Action.THAW, timeout=reply_timeout, info=info, verify=expected is not None)
    if expected is not None:
        got = reply.canary
        if _canonical(got) != _canonical(expected):
            raise CanaryMismatch(
                f"restored worker {inst.id!r} does not reproduce the canary recorded in {manifest.name!r}: "
                f"expected {_short(expected)}, got {_short(got)}",
                expected=expected, got=got,
            )
        with phases("go"):
            control.send(inst, Action.GO, timeout=reply_timeout, info={"canary": "passed"})
    http_got = None
    if verify_canary and manifest.worker.http_canary is not None:
        # let go, it binds its socket in this copy's network namespace; it counts as running once it answers alike
        with phases("canary_http", "the restored worker answers the HTTP canary"):
            http_got = http_canary.check(manifest.worker.http_canary, pid, who=f"restored worker {inst.id!r}")
    inst.state, inst.owner_pid = "running", 0
    inst.save()
    timings = phases.finish()
    return RestoreResult(instance=inst, manifest=manifest, timings=timings, canary_expected=expected,
                         canary_got=reply.canary, thaw_report=reply.data, http_canary_got=http_got)


def _prefetch_weights(settings: Settings, manifest: Manifest, pairs: Any) -> None:
    """Have each weight set made resident on the GPU this copy will run on, while CRIU restores the process.

    Returns at once: the service loads in the background (or already holds the set), and the
    worker's thaw hook waits for it and maps it. So a restore costs max(CRIU + CUDA, load),
    not the sum. Refuses here, before anything is restored, when no service answers or
    the service will not serve these files.
    """
    from thaw.errors import GmsError, GmsUnavailable
    from thaw.gms import Client, WeightFile, WeightSpec

    moved = {p.old: p.new for p in pairs or []}
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


def _layout(manifest: Manifest) -> Layout:
    """The sandbox to rebuild, or IntegrityError: the manifest may come from anyone who can write the store."""
    stdio, net_key = manifest.sandbox.get("stdio", []), manifest.sandbox.get("net_key", netns.NET_KEY)
    try:
        if not isinstance(net_key, str) or not isinstance(stdio, list) or not all(isinstance(p, str) for p in stdio):
            raise TypeError("net_key must be a string and stdio a list of paths")
        return Layout.from_dict(manifest.sandbox)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"artifact {manifest.name!r}: its sandbox layout is malformed ({type(exc).__name__}: "
                             f"{str(exc)[:200]!r})", path=manifest.name) from exc


def _become_subreaper() -> None:
    # restored trees are re-parented to us, not to init, if an intermediate CRIU process exits
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _short(value: Any, n: int = 200) -> str:
    text = _canonical(value)
    return text if len(text) <= n else text[:n] + "..."


