"""thaw on Kubernetes: the operator behind WorkerSnapshot, WorkerRestore and restore-from pods.

One module per concern, handlers thin and the logic in plain functions::

    resources.py   the names shared with the cluster: group, kinds, annotations, conditions
    status.py      what a reconcile step decides (Step: status, Events, retry) and condition helpers
    agents.py      how to reach a node's agent (AgentPort, agent_url) and which failures are temporary
    agent_http.py  AgentPort over thaw.api.client.AgentClient
    cluster.py     what the operator reads and writes in the cluster (Cluster, KubeCluster)
    placement.py   which node and GPU a restore goes to (same GPU model, free capacity)
    snapshots.py   reconcile a WorkerSnapshot; delete its artifact on deletion
    restores.py    reconcile a WorkerRestore; take on pods annotated thaw.dev/restore-from
    handlers.py    the kopf handlers (register(registry, config))
    config.py      OperatorConfig
    runner.py      start kopf with all of the above

The manifests are in deploy/kubernetes and the user's guide in docs/kubernetes.md.
"""
