"""Start the operator: kube credentials, the cluster adapter, the agent connector, kopf."""

from __future__ import annotations

import os
from pathlib import Path

from thaw.k8s.config import OperatorConfig


def run(config: OperatorConfig, *, kubeconfig: Path | None = None) -> None:
    """Run the operator until it is stopped (SIGTERM/SIGINT). Blocks."""
    import kopf
    from kubernetes import client, config as kube_config

    from thaw.k8s import handlers
    from thaw.k8s.agents import http_connector
    from thaw.k8s.cluster import KubeCluster

    if kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(kubeconfig)  # kopf's own login reads the same file
    if os.environ.get("KUBERNETES_SERVICE_HOST") and kubeconfig is None:
        kube_config.load_incluster_config()
    else:
        kube_config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config)
    memo = handlers.Memo(cluster=KubeCluster(client.ApiClient(), config.agents),
                         connect=http_connector(config.token()), config=config)
    kopf.run(registry=registry, memo=memo, standalone=True, clusterwide=not config.namespaces,
             namespaces=list(config.namespaces), liveness_endpoint=config.liveness)
