"""Workers that live in pods: the agent's side of sandbox/pod.py.

* ``anchor_of(pod)``: the pod's thaw entrypoint on this node (by the pod's uid).
* ``adopt(settings, anchor)``: the worker sandbox a snapshot source pod's entrypoint started,
  as an ``Instance`` of this node, so that the snapshot pipeline can checkpoint it. Its
  control directory stays in the pod; the agent reaches it through /proc/<pid>/root.
* ``untie(instances)``: a pod worker whose entrypoint is gone (its container restarted or
  went) is stopped. The other direction needs no agent: a restored worker's stdout is the
  entrypoint's FIFO, and the entrypoint exits when the worker does.
"""

from __future__ import annotations

import json
import logging

from thaw.agent.models import PodRef
from thaw.config import Settings
from thaw.errors import WorkerNotFound
from thaw.pipeline import instances
from thaw.pipeline.instances import Instance
from thaw.sandbox.pod import Anchor, find_anchor, read_environ, sandboxed_worker
from thaw.worker import protocol

log = logging.getLogger("thaw.agent")


def anchor_of(pod: PodRef) -> Anchor:
    try:
        return find_anchor(pod.uid)
    except WorkerNotFound as exc:
        raise WorkerNotFound(f"pod {pod.namespace}/{pod.name} runs no thaw entrypoint on this node", hint=exc.hint) \
            from exc


def adopt(settings: Settings, pod: PodRef) -> Instance:
    """The sandboxed worker of a snapshot source pod, as an instance of this node (the same one on every call)."""
    anchor = anchor_of(pod)
    pid = sandboxed_worker(anchor)
    pidns = protocol.pidns_inode(pid)
    for inst in instances.all_instances(settings):
        if inst.host_pid == pid and inst.pidns == pidns:
            return inst
    control = anchor.host_path(anchor.control_dir)
    try:
        spec = json.loads((control / "sandbox.json").read_text())
        name, argv, layout = str(spec["name"]), [str(a) for a in spec["argv"]], dict(spec["layout"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WorkerNotFound(f"pod {pod.namespace}/{pod.name}: its entrypoint wrote no readable sandbox.json ({exc})",
                             hint="is the worker started by `python -m thaw.sandbox.entrypoint`?") from exc
    inst = instances.create(settings, _worker_name(name, pod), argv=argv, origin="pod", layout=layout,
                            state="running", host_pid=pid, pidns=pidns, ns_key=protocol.sandbox_key(pid),
                            control=control, anchor_pid=anchor.pid)
    log.info("adopted worker %s of pod %s/%s (pid %d)", inst.id, pod.namespace, pod.name, pid)
    return inst


def gpu_of(anchor: Anchor) -> str | None:
    """The GPU the device plugin gave the pod, by UUID: NVIDIA's device plugin (its default ``envvar``
    strategy) names the pod's GPUs in the container's NVIDIA_VISIBLE_DEVICES. None on a CPU node, for
    more than one GPU (a worker restores onto the GPUs it recorded), or when the plugin said it otherwise."""
    return gpu_in(read_environ(anchor.pid).get("NVIDIA_VISIBLE_DEVICES", ""))


def gpu_in(visible: str) -> str | None:
    uuids = [d.strip() for d in visible.split(",") if d.strip()]
    if len(uuids) == 1 and uuids[0].startswith(("GPU-", "MIG-")):
        return uuids[0]
    return None


def untie(everyone: list[Instance]) -> list[Instance]:
    """Stop the live pod workers whose entrypoint is gone; return them."""
    stopped = []
    for inst in everyone:
        if not inst.anchor_pid or not inst.alive() or Anchor(inst.anchor_pid).alive():
            continue
        log.warning("the entrypoint of worker %s's pod is gone: stopping the worker", inst.id)
        inst.kill()
        inst.state = "stopped"
        inst.save()
        stopped.append(inst)
    return stopped


def _worker_name(name: str, pod: PodRef) -> str:
    from thaw.store import check_name
    from thaw.errors import ConfigError

    try:
        return check_name(name, what="worker name")
    except ConfigError:
        return check_name(pod.name[:100], what="worker name")
