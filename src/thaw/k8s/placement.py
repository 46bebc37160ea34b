"""Where a restore runs: a node with the snapshot's GPU model free, and then which GPU on it.

A CUDA checkpoint restores only onto the same GPU model it was taken on, so a snapshot
records its model (``status.artifact.gpuProduct``) and a node qualifies when

* it runs a thaw agent, is schedulable and not NotReady;
* its ``nvidia.com/gpu.product`` label (GPU feature discovery) names the same model;
* its allocatable ``nvidia.com/gpu`` minus what its pods request leaves enough GPUs.

Among the qualifying nodes the one with the most free GPUs wins (ties: by name), which
spreads restores out: parallel restores on one node share its staging disk's bandwidth.
The agent's own report (``node_info``) then picks the GPU: the right model with the most
free memory. Every rejection says why, so a restore that cannot be placed explains itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from thaw.api.models import AgentStatus
from thaw.errors import NoPlacement
from thaw.k8s.resources import GPU_PRODUCT_LABEL, GPU_RESOURCE


@dataclass(frozen=True)
class GpuNeed:
    """What a snapshot needs of a node: ``count`` GPUs of ``product`` (normalized; "" = no GPU at all)."""

    product: str = ""
    count: int = 0
    #: GPU memory the worker held at snapshot time (bytes; 0 = unknown): the chosen GPU must have it free
    memory: int = 0

    @classmethod
    def of(cls, product: str | None, count: int | None, memory: int | None = None) -> GpuNeed:
        product = normalize_product(product or "")
        return cls(product, max(int(count or 0), 1 if product else 0), int(memory or 0))


@dataclass(frozen=True)
class Fit:
    node: str
    ok: bool
    why: str
    free_gpus: int = 0


def normalize_product(name: str) -> str:
    """One spelling for a GPU model: the driver says "NVIDIA H200", GPU feature discovery "NVIDIA-H200"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def requested_gpus(pod: dict[str, Any]) -> int:
    """GPUs a pod holds: the larger of its containers' sum and its largest init container (the scheduler's rule)."""
    spec = pod.get("spec") or {}

    def want(container: dict[str, Any]) -> int:
        res = container.get("resources") or {}
        value = (res.get("limits") or {}).get(GPU_RESOURCE) or (res.get("requests") or {}).get(GPU_RESOURCE) or 0
        return int(value)

    main = sum(want(c) for c in spec.get("containers") or [])
    init = max((want(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def free_gpus(node: dict[str, Any], pods: Iterable[dict[str, Any]]) -> int:
    """Allocatable GPUs of ``node`` that no live pod bound to it requests."""
    name = node["metadata"]["name"]
    allocatable = int(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE) or 0)
    used = sum(requested_gpus(p) for p in pods
               if (p.get("spec") or {}).get("nodeName") == name
               and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
    return allocatable - used


def assess(node: dict[str, Any], pods: Iterable[dict[str, Any]], need: GpuNeed, *, has_agent: bool,
           exclude_pod: str | None = None) -> Fit:
    """Whether ``node`` can take a restore needing ``need``, and why not.

    ``exclude_pod`` (namespace/name) is the pod the restore is for: its own GPU request is not
    counted against the node, since the restored worker uses exactly that allocation.
    """
    name = node["metadata"]["name"]
    if not has_agent:
        return Fit(name, False, "no thaw agent runs there")
    if (node.get("spec") or {}).get("unschedulable"):
        return Fit(name, False, "cordoned")
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") != "True":
        return Fit(name, False, "NotReady")
    if not need.product:
        return Fit(name, True, "no GPU needed")
    labels = (node.get("metadata") or {}).get("labels") or {}
    product = normalize_product(labels.get(GPU_PRODUCT_LABEL, ""))
    if not product:
        return Fit(name, False, f"no {GPU_PRODUCT_LABEL} label")
    if product != need.product:
        return Fit(name, False, f"GPU {product}, the snapshot needs {need.product}")
    counted = [p for p in pods if _key(p) != exclude_pod]
    free = free_gpus(node, counted)
    if free < need.count:
        return Fit(name, False, f"{max(free, 0)} free {GPU_RESOURCE}, needs {need.count}", free)
    return Fit(name, True, f"{free} free {need.product}", free)


def choose_node(nodes: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]], need: GpuNeed,
                has_agent: Callable[[str], bool], *, pinned: str | None = None,
                exclude_pod: str | None = None) -> Fit:
    """The best node for a restore (or ``pinned`` if it fits); NoPlacement lists every candidate and why not."""
    pods = list(pods)
    candidates = [n for n in nodes if pinned is None or n["metadata"]["name"] == pinned]
    if pinned is not None and not candidates:
        raise NoPlacement(f"node {pinned!r} does not exist")
    fits = [assess(n, pods, need, has_agent=has_agent(n["metadata"]["name"]), exclude_pod=exclude_pod)
            for n in candidates]
    good = sorted((f for f in fits if f.ok), key=lambda f: (-f.free_gpus, f.node))
    if good:
        return good[0]
    wanted = f"{need.count} x {need.product}" if need.product else "a node with an agent"
    detail = "; ".join(f"{f.node}: {f.why}" for f in sorted(fits, key=lambda f: f.node)) or "no nodes"
    raise NoPlacement(f"no node fits ({wanted}): {detail}")


def choose_gpu(node_info: AgentStatus, need: GpuNeed, *, wanted: str | None = None) -> str | None:
    """The UUID of the GPU to restore onto, from the agent's report; None when the agent should choose.

    None for CPU-only snapshots and for multi-GPU ones: the agent then maps the GPUs as
    recorded in the snapshot. An agent that cannot read its GPUs (a broken driver) is no
    place for a GPU restore.
    """
    if need.count != 1:
        return None
    if node_info.gpu_error:
        raise NoPlacement(f"the agent cannot read this node's GPUs: {node_info.gpu_error}")
    gpus = [g for g in node_info.gpus if normalize_product(g.name) == need.product]
    if wanted:
        if not any(g.uuid == wanted for g in gpus):
            seen = ", ".join(f"{g.uuid} ({g.name})" for g in node_info.gpus) or "none"
            raise NoPlacement(f"GPU {wanted} is not a {need.product} on this node (it has: {seen})")
        return wanted
    if not gpus:
        raise NoPlacement(f"the agent reports no {need.product} GPU on this node")
    roomy = [g for g in gpus if not need.memory or g.memory_free is None or g.memory_free >= need.memory]
    if not roomy:
        free = ", ".join(f"{g.uuid}: {(g.memory_free or 0) >> 20} MiB" for g in gpus)
        raise NoPlacement(f"no {need.product} on this node has {need.memory >> 20} MiB free ({free})")
    return max(roomy, key=lambda g: (g.memory_free or 0, g.uuid)).uuid


def _key(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"
