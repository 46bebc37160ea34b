"""In-memory stand-ins for the cluster and the agents, for the operator's logic tests."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from thaw.agent.client import AgentUnavailable
from thaw.errors import ArtifactNotFound
from thaw.k8s.status import PodPatch


def node(name: str, *, product: str | None = None, gpus: int = 0, agent: str | None = None, ready: bool = True,
         cordoned: bool = False) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if product:
        labels["nvidia.com/gpu.product"] = product
    annotations = {"thaw.dev/agent-url": agent} if agent else {}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"unschedulable": True} if cordoned else {},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name: str, *, namespace: str = "ml", node: str | None = "node-a", phase: str = "Running", gpus: int = 0,
        annotations: dict[str, str] | None = None) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    spec: dict[str, Any] = {"containers": [{"name": "worker", "image": "w", "resources": resources}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "annotations": annotations or {}},
            "spec": spec, "status": {"phase": phase}}


def snapshot(name: str = "snap", *, namespace: str = "ml", pod_name: str = "worker-0", status: dict | None = None,
             **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "thaw.dev/v1alpha1", "kind": "WorkerSnapshot",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                         "creationTimestamp": "2026-11-28T10:00:00Z"},
            "spec": {"podName": pod_name, "retention": "Delete", "leaveRunning": True, "timeoutSeconds": 1800, **spec},
            "status": status or {}}


def ready_snapshot(name: str = "snap", *, product: str = "", gpus: int = 0, canary: bool = True,
                   namespace: str = "ml") -> dict[str, Any]:
    artifact = {"name": f"{namespace}.{name}", "id": "a1", "digest": "xxh3_128:00", "sizeBytes": 10, "size": "10B",
                "gpuCount": gpus, "hasCanary": canary}
    if product:
        artifact["gpuProduct"] = product
    return snapshot(name, namespace=namespace, status={"phase": "Ready", "node": "node-a", "artifact": artifact})


def restore(name: str = "r1", *, namespace: str = "ml", snap: str = "snap", target: dict | None = None,
            status: dict | None = None) -> dict[str, Any]:
    return {"apiVersion": "thaw.dev/v1alpha1", "kind": "WorkerRestore",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                         "creationTimestamp": "2026-11-28T10:00:00Z"},
            "spec": {"snapshotName": snap, "target": target or {}, "timeoutSeconds": 900},
            "status": status or {}}


class FakeCluster:
    def __init__(self, nodes: list[dict] = (), pods: list[dict] = (), snapshots: list[dict] = ()) -> None:
        self.nodes = list(nodes)
        self.pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
        self.snapshots = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in snapshots}
        self.restores: dict[tuple[str, str], dict] = {}
        self.pod_patches: list[PodPatch] = []

    def get_pod(self, namespace: str, name: str) -> dict | None:
        return copy.deepcopy(self.pods.get((namespace, name)))

    def list_nodes(self) -> list[dict]:
        return copy.deepcopy(self.nodes)

    def list_pods(self, node: str | None = None) -> list[dict]:
        return [copy.deepcopy(p) for p in self.pods.values() if node is None or p["spec"].get("nodeName") == node]

    def agent_urls(self, nodes: list[dict]) -> dict[str, str]:
        return {n["metadata"]["name"]: n["metadata"]["annotations"]["thaw.dev/agent-url"]
                for n in nodes if n["metadata"]["annotations"].get("thaw.dev/agent-url")}

    def get_snapshot(self, namespace: str, name: str) -> dict | None:
        return copy.deepcopy(self.snapshots.get((namespace, name)))

    def get_restore(self, namespace: str, name: str) -> dict | None:
        return copy.deepcopy(self.restores.get((namespace, name)))

    def create_restore(self, namespace: str, body: dict) -> dict:
        key = (namespace, body["metadata"]["name"])
        self.restores.setdefault(key, copy.deepcopy(body))
        return copy.deepcopy(self.restores[key])

    def patch_pod(self, patch: PodPatch) -> None:
        self.pod_patches.append(patch)
        target = self.pods.get((patch.namespace, patch.name))
        if target is not None:
            target["metadata"].setdefault("annotations", {}).update(patch.annotations)


class FakeAgent:
    """An agent whose jobs the test moves along by hand; ``down`` makes every call fail like a dead agent."""

    def __init__(self, url: str, gpus: list[dict] | None = None) -> None:
        self.url = url
        self.gpus = gpus or []
        self.calls: list[tuple] = []
        self.jobs: dict[str, dict] = {}
        self.artifacts: dict[str, dict] = {}
        self.down = False
        self.fail_next: Exception | None = None
        self._ids = itertools.count(1)

    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if self.down:
            raise AgentUnavailable(f"{self.url}: connection refused")
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    def _job(self, kind: str, **request: Any) -> str:
        job_id = f"job-{next(self._ids)}"
        self.jobs[job_id] = {"id": job_id, "kind": kind, "state": "running", "request": request}
        return job_id

    def snapshot(self, worker: str, artifact: str, *, leave_running: bool = True,
                 canary_http: list[dict[str, Any]] | None = None, pod: dict | None = None,
                 key: str | None = None) -> str:
        self._call("snapshot", worker, artifact, leave_running)
        return self._keyed(key) or self._job("snapshot", worker=worker, artifact=artifact, canary_http=canary_http,
                                             pod=pod, key=key)

    def restore(self, artifact: str, *, gpu: str | None = None, name: str | None = None,
                digest: str | None = None, pod: dict | None = None, key: str | None = None) -> str:
        self._call("restore", artifact, gpu, name)
        return self._keyed(key) or self._job("restore", artifact=artifact, gpu=gpu, name=name, digest=digest,
                                             pod=pod, key=key)

    def _keyed(self, key: str | None) -> str | None:
        """What the real agent does with an idempotency key: the job it started before (agent tests check it)."""
        return next((j for j, job in self.jobs.items() if key and job["request"].get("key") == key), None)

    def job(self, job_id: str) -> dict:
        self._call("job", job_id)
        if job_id not in self.jobs:
            raise ArtifactNotFound(f"no job {job_id}")
        return copy.deepcopy(self.jobs[job_id])

    def inspect_artifact(self, name: str) -> dict:
        self._call("inspect_artifact", name)
        if name not in self.artifacts:
            raise ArtifactNotFound(f"no artifact {name}")
        return copy.deepcopy(self.artifacts[name])

    def node_info(self) -> dict:
        self._call("node_info")
        return {"gpus": copy.deepcopy(self.gpus)}

    def delete_artifact(self, name: str) -> None:
        self._call("delete_artifact", name)
        if self.artifacts.pop(name, None) is None:
            raise ArtifactNotFound(f"no artifact {name}")

    def stop_worker(self, name: str) -> None:
        self._call("stop_worker", name)

    # --- test controls
    def finish(self, job_id: str, result: dict) -> None:
        self.jobs[job_id].update(state="succeeded", result=result)

    def fail(self, job_id: str, reason: str, message: str, **detail: Any) -> None:
        self.jobs[job_id].update(state="failed", error={"reason": reason, "message": message, "detail": detail})


class Agents:
    """The ``connect`` function for FakeAgents, by URL."""

    def __init__(self, *agents: FakeAgent) -> None:
        self.by_url = {a.url: a for a in agents}

    def __call__(self, url: str) -> FakeAgent:
        return self.by_url[url]
