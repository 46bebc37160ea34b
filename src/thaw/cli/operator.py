"""``thaw operator``: the Kubernetes operator (WorkerSnapshot, WorkerRestore, restore-from pods).

    thaw operator run                       # in the cluster (the Deployment in deploy/kubernetes)
    thaw operator run --kubeconfig ~/.kube/config --namespace ml    # from a workstation, one namespace

Every option also reads a ``THAW_*`` variable (thaw.config.OperatorSettings), which is how the
Deployment sets them from the thaw-settings ConfigMap. docs/kubernetes.md describes the resources.
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
        "--namespace", "-n", help="watch only these namespaces (repeat the option, or comma-separate) "
        "[env THAW_NAMESPACES; default: the whole cluster]", show_default=False)] = None,
    kubeconfig: Annotated[Path | None, typer.Option(
        help="kubeconfig to use outside a cluster [env KUBECONFIG; default: in-cluster credentials]",
        show_default=False)] = None,
    poll: Annotated[float | None, typer.Option(
        help="seconds between looks at running jobs [env THAW_POLL_SECONDS; default: 1]", show_default=False)] = None,
    agent_namespace: Annotated[str | None, typer.Option(
        help="namespace of the agent DaemonSet's pods [env THAW_AGENT_NAMESPACE; default: thaw-system]",
        show_default=False)] = None,
    agent_selector: Annotated[str | None, typer.Option(
        help="label selector of the agent pods [env THAW_AGENT_SELECTOR; default: app.kubernetes.io/name=thaw-agent]",
        show_default=False)] = None,
    agent_port: Annotated[int | None, typer.Option(
        help="TCP port the agents listen on [env THAW_AGENT_PORT; default: 7070]", show_default=False)] = None,
    agent_token_file: Annotated[Path | None, typer.Option(
        help="file with the agents' bearer token [env THAW_AGENT_TOKEN_FILE]", show_default=False)] = None,
    agent_ca: Annotated[Path | None, typer.Option(
        help="CA of the agents' TLS certificate: speak https to them [env THAW_AGENT_CA; default: http]",
        show_default=False)] = None,
    agent_server_name: Annotated[str | None, typer.Option(
        help="the name the agents' certificate carries [env THAW_AGENT_SERVER_NAME; default: thaw-agent]",
        show_default=False)] = None,
    agent_daemonset: Annotated[str | None, typer.Option(
        help="the DaemonSet whose pods are the agents (others are not trusted) [env THAW_AGENT_DAEMONSET; "
             "default: thaw-agent]", show_default=False)] = None,
    agent_url_annotation: Annotated[bool | None, typer.Option(
        "--agent-url-annotation",
        help="also reach agents a Node's thaw.dev/agent-url annotation names (agents outside the DaemonSet; "
             "whoever may annotate Nodes can then redirect the operator) [env THAW_AGENT_URL_ANNOTATION]",
        show_default=False)] = None,
    delete_timeout: Annotated[float | None, typer.Option(
        help="seconds to keep trying to delete a deleted snapshot's artifact [env THAW_DELETE_TIMEOUT; default: 600]",
        show_default=False)] = None,
    liveness: Annotated[str | None, typer.Option(
        help="serve a liveness probe here, e.g. http://0.0.0.0:8080/healthz [env THAW_LIVENESS]",
        show_default=False)] = None,
    peering: Annotated[str | None, typer.Option(
        help="leader election among replicas through this ClusterKopfPeering object "
             "[default: none, one replica] [env THAW_PEERING]", show_default=False)] = None,
    peering_lifetime: Annotated[int | None, typer.Option(
        help="seconds before a silent leader is replaced [default: 30] [env THAW_PEERING_LIFETIME]",
        show_default=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every handler call")] = False,
) -> None:
    """Run the operator until stopped."""
    from thaw.config import OperatorSettings, load
    from thaw.k8s.config import OperatorConfig
    from thaw.k8s.runner import run as run_operator

    given = {"namespaces": namespace or None, "kubeconfig": kubeconfig, "poll": poll,
             "agent_namespace": agent_namespace, "agent_selector": agent_selector, "agent_port": agent_port,
             "agent_token_file": agent_token_file, "delete_timeout": delete_timeout, "liveness": liveness,
             "peering": peering, "peering_lifetime": peering_lifetime, "agent_ca": agent_ca,
             "agent_server_name": agent_server_name, "agent_daemonset": agent_daemonset,
             "agent_url_annotation": agent_url_annotation}
    settings = load(OperatorSettings, **given)
    run_operator(OperatorConfig.of(settings), kubeconfig=settings.kubeconfig, in_cluster=settings.in_cluster,
                 verbose=verbose)


if __name__ == "__main__":
    app()
