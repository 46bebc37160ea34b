"""What the operator reads and writes in the cluster, behind one small interface.

The reconcile logic sees plain dicts (the objects' JSON, camelCase keys) through
``Cluster``; ``KubeCluster`` implements it with the official ``kubernetes`` client, and
the unit tests with an in-memory fake. kopf itself only delivers the reconciled object
and applies its status patch.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, cast

from thaw.k8s import agents
from thaw.k8s.agents import AgentLookup, AgentPort, AgentUnavailable, Connect
from thaw.k8s.resources import GROUP, RESTORES, SNAPSHOTS, VERSION
from thaw.k8s.status import PodPatch


class Cluster(Protocol):
    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list_nodes(self) -> list[dict[str, Any]]: ...

    def list_pods(self, node: str | None = None) -> list[dict[str, Any]]:
        """Pods bound to ``node`` (all pods when None), for GPU accounting."""
        ...

    def agent_urls(self, nodes: list[dict[str, Any]]) -> dict[str, str]:
        """Node name → agent URL, for the nodes that have an agent."""
        ...

    def get_snapshot(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def get_restore(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create_restore(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a WorkerRestore; if one of that name exists already, return it instead."""
        ...

    def patch_pod(self, patch: PodPatch) -> None: ...


class KubeCluster:
    """``Cluster`` over the official client. Objects come back as raw JSON dicts, not client models."""

    def __init__(self, api_client: Any, lookup: AgentLookup) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._lookup = lookup

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _or_none(lambda: _raw(self._core.read_namespaced_pod(name, namespace, _preload_content=False)))

    def list_nodes(self) -> list[dict[str, Any]]:
        return _raw(self._core.list_node(_preload_content=False))["items"]

    def list_pods(self, node: str | None = None) -> list[dict[str, Any]]:
        selector = f"spec.nodeName={node}" if node else None
        return _raw(self._core.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False))["items"]

    def agent_urls(self, nodes: list[dict[str, Any]]) -> dict[str, str]:
        pods = _raw(self._core.list_namespaced_pod(self._lookup.namespace, label_selector=self._lookup.selector,
                                                   _preload_content=False))["items"]
        urls = {}
        for node in nodes:
            url = agents.agent_url(node, pods, lookup=self._lookup)
            if url:
                urls[node["metadata"]["name"]] = url
        return urls

    def get_snapshot(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _or_none(lambda: self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, SNAPSHOTS, name))

    def get_restore(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _or_none(lambda: self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, RESTORES, name))

    def create_restore(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client import ApiException

        try:
            return cast(dict[str, Any], self._custom.create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                    RESTORES, body))
        except ApiException as exc:
            if exc.status != 409:
                raise
        return cast(dict[str, Any], self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, RESTORES,
                                                                             body["metadata"]["name"]))

    def patch_pod(self, patch: PodPatch) -> None:
        """Condition first, annotations last: readers act on the restore-state annotation. A gone pod is fine."""
        # strategic merge: conditions merge by type, so the kubelet's own conditions are kept
        smp = "application/strategic-merge-patch+json"
        if patch.condition is not None and _or_none(lambda: self._core.patch_namespaced_pod_status(
                patch.name, patch.namespace, {"status": {"conditions": [patch.condition]}}, _content_type=smp)) is None:
            return
        if patch.annotations:
            _or_none(lambda: self._core.patch_namespaced_pod(
                patch.name, patch.namespace, {"metadata": {"annotations": patch.annotations}}, _content_type=smp))


def agent_for(cluster: Cluster, connect: Connect, node: str | None, *, any_node: bool = False) -> AgentPort:
    """The agent of ``node``; with ``any_node``, any agent if that one is gone (they all share one store)."""
    urls = cluster.agent_urls(cluster.list_nodes())
    if node and node in urls:
        return connect(urls[node])
    if any_node and urls:
        return connect(urls[min(urls)])
    raise AgentUnavailable(f"no thaw agent found for node {node}" if node else "no thaw agent found on any node",
                           hint="is the agent DaemonSet running there, or the node annotated thaw.dev/agent-url?")


def _raw(response: Any) -> Any:
    return json.loads(response.data)


def _or_none(call: Any) -> Any:
    from kubernetes.client import ApiException

    try:
        return call()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
