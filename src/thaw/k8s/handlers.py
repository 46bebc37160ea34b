"""The kopf handlers: thin adapters from kopf's calls to the reconcile functions.

Each handler reads the object kopf hands it, calls one plain function (snapshots.py,
restores.py) and applies the ``Step`` it returns: the pod patch first, then the Events,
then the status (kopf patches it when the handler returns), and finally a
``kopf.TemporaryError`` when the step asks to retry later, so that kopf's own retry
counter drives the back-off. Handlers are registered by ``register`` on a registry
given to it, not at import time, so the poll interval is a setting and tests can build
their own registry.

Progress and the last handled state are kept in annotations under ``thaw.dev/``
(not in ``status``, whose schema is the CRD's), and the finalizer is named
``thaw.dev/cleanup`` (artifacts of deleted snapshots, workers of deleted restore-from pods).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from thaw.k8s import restores, snapshots
from thaw.k8s.agents import Connect
from thaw.k8s.cluster import Cluster
from thaw.k8s.config import OperatorConfig
from thaw.k8s.resources import (
    FINALIZER,
    GROUP,
    RESTORE_FROM,
    RESTORES,
    SNAPSHOTS,
    TERMINAL,
    VERSION,
)
from thaw.k8s.status import Step, fit_status


class Memo(kopf.Memo):
    """What every handler gets as ``memo``: the cluster adapter, the agent connector, the settings."""

    cluster: Cluster
    connect: Connect
    config: OperatorConfig
    kube_config: Any  # kubernetes.client.Configuration: kopf logs in with the same credentials


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Declare thaw's handlers on ``registry``."""
    # a fresh registry has no login handler: kopf uses the credentials the kubernetes client was given
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(configure)
    kopf.timer(GROUP, VERSION, SNAPSHOTS, registry=registry, interval=config.poll, when=in_progress)(snapshot_tick)
    kopf.on.delete(GROUP, VERSION, SNAPSHOTS, registry=registry, timeout=config.delete_timeout)(snapshot_deleted)
    kopf.timer(GROUP, VERSION, RESTORES, registry=registry, interval=config.poll, when=in_progress)(restore_tick)
    # event-driven, not a timer per pod: a pod is taken on when it is bound (an update event) or seen at start;
    # afterwards its WorkerRestore's own timer runs only while that restore is in progress
    kopf.on.event("", "v1", "pods", registry=registry, annotations={RESTORE_FROM: kopf.PRESENT},
                  when=wants_restore)(pod_event)
    # a finalizer on restore-from pods: scaling down must stop the restored worker, or its GPU leaks
    kopf.on.delete("", "v1", "pods", registry=registry, annotations={RESTORE_FROM: kopf.PRESENT},
                   timeout=config.delete_timeout)(pod_deleted)


def login(memo: Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf's connection, from the kubernetes client configuration runner.run loaded (one source of credentials)."""
    cfg = memo.kube_config
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization") or ""
    scheme, _, token = header.partition(" ")
    return kopf.ConnectionInfo(server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
                               scheme=scheme or None, token=token or None, certificate_path=cfg.cert_file,
                               private_key_path=cfg.key_file)


def configure(settings: kopf.OperatorSettings, memo: Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.peering.clusterwide = True  # one neighbourhood for all replicas, however many namespaces they watch
    settings.peering.lifetime = memo.config.peering_lifetime
    settings.peering.mandatory = memo.config.peering is not None
    logging.getLogger("kopf.objects").addFilter(RetriesAsWarnings())
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    # Events are thaw's own (reasons like SnapshotReady, CanaryMismatch, AgentUnreachable once per outage);
    # kopf adds only its errors, not a Warning Event per retry
    settings.posting.level = logging.ERROR
    # no watching of CRDs and namespaces: the operator's RBAC then needs no cluster-wide read of either
    settings.scanning.disabled = True


class RetriesAsWarnings(logging.Filter):
    """kopf logs every retry of a handler (our TemporaryError: an agent down or busy) at ERROR, which pages
    whoever alerts on errors during a plain outage. A retry is a warning; the back-off is in the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and "failed temporarily" in record.getMessage():
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def in_progress(body: kopf.Body, **_: Any) -> bool:
    return (body.get("status") or {}).get("phase") not in TERMINAL


def wants_restore(body: kopf.Body, **_: Any) -> bool:
    return restores.pod_wants_restore(dict(body))


def snapshot_tick(body: kopf.Body, patch: kopf.Patch, retry: int, memo: Memo, **_: Any) -> None:
    apply(snapshots.reconcile(_plain(body), memo.cluster, memo.connect, retry=retry), body, patch, memo)


def snapshot_deleted(body: kopf.Body, patch: kopf.Patch, retry: int, memo: Memo, **_: Any) -> None:
    apply(snapshots.finalize(_plain(body), memo.cluster, memo.connect, retry=retry), body, patch, memo)


def restore_tick(body: kopf.Body, patch: kopf.Patch, retry: int, memo: Memo, **_: Any) -> None:
    apply(restores.reconcile(_plain(body), memo.cluster, memo.connect, retry=retry), body, patch, memo)


def pod_event(body: kopf.Body, memo: Memo, type: str | None = None, **_: Any) -> None:
    if type == "DELETED":
        return
    step = restores.take_on_pod(_plain(body), memo.cluster)
    for event in step.events:  # event handlers have no patch to apply: the pod is patched by the cluster adapter
        kopf.event(event.target or body, type=event.type, reason=event.reason, message=event.message[:1024])


def pod_deleted(body: kopf.Body, patch: kopf.Patch, retry: int, memo: Memo, **_: Any) -> None:
    apply(restores.release_pod(_plain(body), memo.cluster, memo.connect, retry=retry), body, patch, memo)


def apply(step: Step, body: kopf.Body, patch: kopf.Patch, memo: Memo) -> None:
    """Write what a step decided: pod, Events, status; then ask kopf to retry if the step says so."""
    if step.pod is not None:
        memo.cluster.patch_pod(step.pod)  # before the status: Ready is never recorded ahead of the pod
    for event in step.events:
        kopf.event(event.target or body, type=event.type, reason=event.reason, message=event.message[:1024])
    if step.status:
        patch.setdefault("status", {}).update(fit_status(step.status))
    if step.retry_in is not None:
        raise kopf.TemporaryError(step.message or "retrying", delay=step.retry_in)


def _plain(body: kopf.Body) -> dict[str, Any]:
    """kopf's read-only body as the plain, JSON-like dict the reconcile functions take."""
    return _to_plain(body)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value
