"""``thaw operator``: the Kubernetes operator (WorkerSnapshot, WorkerRestore, restore-from pods).

    thaw operator run                       # in the cluster (the Deployment in deploy/kubernetes)
    thaw operator run --kubeconfig ~/.kube/config --namespace ml    # from a workstation, one namespace

Every option also reads a ``THAW_*`` variable, which is how the Deployment sets them
from the thaw-settings ConfigMap. docs/kubernetes.md describes the resources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thaw.cli.output import friendly

app = typer.Typer(
    name="operator",
    help="The Kubernetes operator: snapshots and restores of workers as Kubernetes objects.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _group() -> None:
    """The Kubernetes operator."""  # a callback keeps `run` a sub-command even while it is the only one


@app.command()
@friendly
def run(
    namespace: Annotated[list[str] | None, typer.Option(
        "--namespace", "-n", envvar="THAW_NAMESPACES",
        help="watch only these namespaces (repeat the option) [default: the whole cluster]")] = None,
    kubeconfig: Annotated[Path | None, typer.Option(
        envvar="KUBECONFIG", help="kubeconfig to use outside a cluster [default: in-cluster credentials]")] = None,
    poll: Annotated[float, typer.Option(envvar="THAW_POLL_SECONDS", help="seconds between looks at running jobs")] = 1.0,
    agent_namespace: Annotated[str, typer.Option(
        envvar="THAW_AGENT_NAMESPACE", help="namespace of the agent DaemonSet's pods")] = "thaw-system",
    agent_selector: Annotated[str, typer.Option(
        envvar="THAW_AGENT_SELECTOR", help="label selector of the agent pods")] = "app.kubernetes.io/name=thaw-agent",
    agent_port: Annotated[int, typer.Option(envvar="THAW_AGENT_PORT", help="TCP port the agents listen on")] = 7070,
    agent_token_file: Annotated[Path | None, typer.Option(
        envvar="THAW_AGENT_TOKEN_FILE", help="file with the agents' bearer token")] = None,
    agent_ca: Annotated[Path | None, typer.Option(
        envvar="THAW_AGENT_CA", help="CA of the agents' TLS certificate: speak https to them [default: http]")] = None,
    agent_server_name: Annotated[str, typer.Option(
        envvar="THAW_AGENT_SERVER_NAME", help="the name the agents' certificate carries")] = "thaw-agent",
    agent_daemonset: Annotated[str, typer.Option(
        envvar="THAW_AGENT_DAEMONSET", help="the DaemonSet whose pods are the agents (others are not trusted)")]
    = "thaw-agent",
    agent_url_annotation: Annotated[bool, typer.Option(
        "--agent-url-annotation", envvar="THAW_AGENT_URL_ANNOTATION",
        help="also reach agents a Node's thaw.dev/agent-url annotation names (agents outside the DaemonSet; "
             "whoever may annotate Nodes can then redirect the operator)")] = False,
    delete_timeout: Annotated[float, typer.Option(
        envvar="THAW_DELETE_TIMEOUT", help="seconds to keep trying to delete a deleted snapshot's artifact")] = 600.0,
    liveness: Annotated[str | None, typer.Option(
        envvar="THAW_LIVENESS", help="serve a liveness probe here, e.g. http://0.0.0.0:8080/healthz")] = None,
    peering: Annotated[str | None, typer.Option(
        envvar="THAW_PEERING", help="leader election among replicas through this ClusterKopfPeering object "
                                    "[default: none, one replica]")] = None,
    peering_lifetime: Annotated[int, typer.Option(
        envvar="THAW_PEERING_LIFETIME", help="seconds before a silent leader is replaced")] = 30,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every handler call")] = False,
) -> None:
    """Run the operator until stopped."""
    from thaw.k8s.cluster import AgentLookup
    from thaw.k8s.config import OperatorConfig
    from thaw.k8s.runner import run as run_operator

    namespaces = tuple(n for item in namespace or [] for n in item.split(",") if n)
    lookup = AgentLookup(agent_namespace, agent_selector, agent_port, daemonset=agent_daemonset,
                         scheme="https" if agent_ca else "http", url_annotation=agent_url_annotation)
    config = OperatorConfig(poll=poll, agents=lookup, token_file=agent_token_file, namespaces=namespaces,
                            delete_timeout=delete_timeout, liveness=liveness, peering=peering or None,
                            peering_lifetime=peering_lifetime, agent_ca=agent_ca, agent_server_name=agent_server_name)
    run_operator(config, kubeconfig=kubeconfig, verbose=verbose)


if __name__ == "__main__":
    app()
