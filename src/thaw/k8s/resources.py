"""The names thaw's operator shares with the cluster: API group, kinds, annotations, condition types.

Everything a user or another controller can see or set is named here once, so that the
manifests in ``deploy/kubernetes``, the docs and the code cannot drift apart unnoticed
(tests/k8s/test_manifests.py reads the CRDs and checks them against these names).
"""

from __future__ import annotations

import hashlib
from typing import Any

GROUP = "thaw.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

SNAPSHOTS = "workersnapshots"
RESTORES = "workerrestores"
SNAPSHOT_KIND = "WorkerSnapshot"
RESTORE_KIND = "WorkerRestore"

# --- annotations and labels ---------------------------------------------------------------------------
#: on a Node: where that node's agent listens (``http://10.0.3.7:7070``). Overrides the lookup of the
#: agent pod on the node; for agents that do not run as the DaemonSet (tests, bare-metal installs).
AGENT_URL = f"{GROUP}/agent-url"
#: on a Pod: the worker's name as its node's agent knows it (default: the pod's name)
WORKER = f"{GROUP}/worker"
#: on a Pod (usually set in a Deployment's pod template): start this replica from the named
#: WorkerSnapshot instead of a cold start
RESTORE_FROM = f"{GROUP}/restore-from"
#: on a Pod, written by the operator: Restoring, Restored, ColdStart (the pod's entrypoint reads it
#: through the downward API to decide whether to start the worker itself)
RESTORE_STATE = f"{GROUP}/restore-state"
#: on a Pod, written by the operator: why it is in that state (human-readable)
RESTORE_REASON = f"{GROUP}/restore-reason"
#: on a Pod, written by the operator: the WorkerRestore created for it
RESTORE_OBJECT = f"{GROUP}/workerrestore"
#: on a Pod, written by the operator when restored: the restored worker's name on its node
RESTORED_WORKER = f"{GROUP}/restored-worker"

#: the pod condition the operator sets; list it in the pod's ``spec.readinessGates`` so that
#: the pod cannot become Ready (receive traffic) before the restored worker passed its canary
POD_CONDITION = f"{GROUP}/restored"

# --- pod restore states (values of RESTORE_STATE) -----------------------------------------------------
RESTORING = "Restoring"
RESTORED = "Restored"
COLD_START = "ColdStart"
POD_STATES = (RESTORING, RESTORED, COLD_START)

# --- the GPU resources and labels the NVIDIA device plugin and GPU feature discovery publish -----------
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# --- phases ---------------------------------------------------------------------------------------------
PENDING = "Pending"
SNAPSHOTTING = "Snapshotting"
RESTORING_PHASE = "Restoring"
READY = "Ready"
FAILED = "Failed"
DELETING = "Deleting"
TERMINAL = (READY, FAILED)

# --- condition types ------------------------------------------------------------------------------------
#: the object reached what it asked for (a published artifact; a verified, running worker)
COND_READY = "Ready"
#: the node's agent could be reached (False while the operator backs off and retries)
COND_AGENT = "AgentReachable"
#: a node was chosen for a restore
COND_SCHEDULED = "Scheduled"
#: the restored worker reproduced the canary recorded at snapshot time
COND_CANARY = "CanaryPassed"

#: the finalizer that lets the operator clean up before an object goes: a WorkerSnapshot's artifact,
#: the worker restored for a restore-from pod (so that scaling down frees its GPU)
FINALIZER = f"{GROUP}/cleanup"


#: the module a pod's container runs as its command to host a thaw worker (thaw.sandbox.entrypoint)
ENTRYPOINT_MODULE = "thaw.sandbox.entrypoint"


def pod_ref(pod: dict[str, Any]) -> dict[str, str] | None:
    """{namespace, name, uid} of a pod whose container runs thaw's entrypoint: the agent then snapshots its
    worker from inside it and restores into it. None for other pods (their worker runs beside them, on the agent)."""
    meta = pod.get("metadata") or {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        if ENTRYPOINT_MODULE in [*(container.get("command") or []), *(container.get("args") or [])]:
            return {"namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "uid": meta.get("uid", "")}
    return None


def short_name(name: str, limit: int) -> str:
    """``name`` if it fits in ``limit`` characters, else a prefix plus a hash of the whole."""
    if len(name) <= limit:
        return name
    return f"{name[:limit - 17]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
