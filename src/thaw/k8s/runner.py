"""Start the operator: kube credentials, the cluster adapter, the agent connector, kopf."""

from __future__ import annotations

import secrets

from pathlib import Path

from thaw.k8s.config import OperatorConfig


def run(config: OperatorConfig, *, kubeconfig: Path | None = None, in_cluster: bool = False,
        verbose: bool = False) -> None:
    """Run the operator until it is stopped (SIGTERM/SIGINT). Blocks."""
    import kopf
    from kubernetes import client
    from kubernetes import config as kube_config

    from thaw.k8s import handlers
    from thaw.k8s.agents import http_connector
    from thaw.k8s.cluster import KubeCluster

    cfg = client.Configuration()
    if in_cluster and kubeconfig is None:
        kube_config.load_incluster_config(client_configuration=cfg)
    else:
        kube_config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, client_configuration=cfg)
    kopf.configure(verbose=verbose, log_prefix=True)  # kopf.run() alone sets up no logging
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config)
    memo = handlers.Memo(cluster=KubeCluster(client.ApiClient(cfg), config.agents),
                         connect=http_connector(config.token(), ca=config.agent_ca,
                                                server_name=config.agent_server_name),
                         config=config, kube_config=cfg)
    # with peering, distinct random priorities: kopf pauses every replica that sees one of a higher (or equal)
    # priority; without, one standalone replica
    kopf.run(registry=registry, memo=memo, clusterwide=not config.namespaces, namespaces=list(config.namespaces),
             liveness_endpoint=config.liveness, standalone=config.peering is None, peering_name=config.peering,
             priority=1 + secrets.randbelow(2**30) if config.peering else None)
