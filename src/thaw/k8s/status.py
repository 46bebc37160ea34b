"""What one reconcile step decides: a status patch, the Events to record, and when to look again.

The reconcile functions (snapshots.py, restores.py) are plain functions that return a
``Step``; only handlers.py turns it into kopf's patch, Events and retries. That keeps the
logic testable without a cluster and the handlers a few lines each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from thaw.k8s.resources import COND_AGENT, COND_READY, FAILED, PENDING

NORMAL = "Normal"
WARNING = "Warning"


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to record on ``target`` (the reconciled object unless another body is given)."""

    type: str  # Normal | Warning
    reason: str  # CamelCase, e.g. SnapshotReady
    message: str
    target: dict[str, Any] | None = None


@dataclass(frozen=True)
class PodPatch:
    """Annotations and one status condition to set on a pod (strategic merge: the kubelet's conditions stay)."""

    namespace: str
    name: str
    annotations: dict[str, str]
    condition: dict[str, Any] | None = None


@dataclass
class Step:
    """The outcome of one reconcile step.

    ``status`` is merged into the object's status. ``retry_in`` set means a temporary
    failure: look again after that many seconds (handlers raise kopf.TemporaryError, so
    kopf counts the retries and the next step gets a longer back-off). ``pod`` is a change
    to write to the pod a restore serves; handlers write it before the status, so that a
    restore is never Ready while its pod does not say so yet.
    """

    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    retry_in: float | None = None
    message: str = ""
    pod: PodPatch | None = None

    def event(self, type: str, reason: str, message: str, *, target: dict[str, Any] | None = None) -> Step:
        self.events.append(Event(type, reason, message, target))
        return self


def now_iso(now: datetime | None = None) -> str:
    """An RFC 3339 timestamp as Kubernetes writes them (seconds, 'Z')."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text)  # Python >= 3.11 reads Kubernetes' trailing 'Z'


def set_condition(conditions: list[dict[str, Any]] | None, type: str, status: bool | None, reason: str,
                  message: str = "", *, now: datetime | None = None, generation: int | None = None) -> list[dict[str, Any]]:
    """``conditions`` with the condition ``type`` set; lastTransitionTime moves only when the status changes.

    ``status`` None means Unknown. Returns a new list (the whole list is what a merge patch replaces).
    """
    value = "Unknown" if status is None else ("True" if status else "False")
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions or []:
        if cond.get("type") != type:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != value
        out.append(_condition(type, value, reason, message,
                              now_iso(now) if changed else cond.get("lastTransitionTime") or now_iso(now), generation))
    if not found:
        out.append(_condition(type, value, reason, message, now_iso(now), generation))
    return out


def condition(conditions: list[dict[str, Any]] | None, type: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type), None)


def backoff(retry: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential back-off for the ``retry``-th retry (0-based): 1, 2, 4, ... seconds, at most ``cap``."""
    return min(cap, base * (2 ** max(0, min(retry, 16))))


# --- the steps every reconciler takes --------------------------------------------------------------------------

def pending(conds: Any, reason: str, message: str, now: datetime) -> Step:
    """Stay (or go back to) Pending, waiting for something outside thaw; an Event only when the reason changes."""
    new = set_condition(conds, COND_READY, False, reason, message, now=now)
    step = Step(status={"phase": PENDING, "message": message, "conditions": new})
    if changed(conds, new, COND_READY):
        step.event(NORMAL, reason, message)
    return step


def unreachable(step: Step, conds: Any, node: str | None, exc: BaseException, retry: int, now: datetime, *,
                phase: str | None = None) -> Step:
    """The node's agent did not answer: AgentReachable=False (one Warning Event), retry with back-off.

    The status still says where things stand for ``kubectl get``: the node, the phase (``phase``, for an
    object that had none yet) and a Ready condition; the message says why, on every retry.
    """
    message = f"agent on {node}: {exc} (retry {retry + 1})"
    new = set_condition(conds, COND_AGENT, False, "AgentUnreachable", message, now=now)
    if condition(new, COND_READY) is None:
        new = set_condition(new, COND_READY, False, "AgentUnreachable", message, now=now)
    step.status.update({"conditions": new, "message": message, **({"node": node} if node else {}),
                        **({"phase": phase} if phase else {})})
    if changed(conds, new, COND_AGENT):
        step.event(WARNING, "AgentUnreachable", f"{message}; retrying with back-off")
    return retry_later(step, message, retry)


def retry_later(step: Step, message: str, retry: int) -> Step:
    step.retry_in = backoff(retry)
    step.message = message
    return step


def failed(conds: Any, reason: str, message: str, now: datetime, step: Step | None = None, *,
           took: float | None = None) -> Step:
    """Phase Failed with Ready=False for ``reason``, and a Warning Event saying why."""
    step = step or Step()
    step.status.update({"phase": FAILED, "message": message, "completedAt": now_iso(now), "progress": None,
                        "conditions": set_condition(step.status.get("conditions", conds), COND_READY, False, reason,
                                                    message, now=now)})
    if took is not None:
        step.status["duration"] = human_duration(took)
    return step.event(WARNING, reason, message)


def changed(old: Any, new: Any, type: str) -> bool:
    """Whether condition ``type`` differs in status or reason between two condition lists."""
    a, b = condition(old, type), condition(new, type)
    return a is None or b is None or (a.get("status"), a.get("reason")) != (b.get("status"), b.get("reason"))


def flapped(conds: Any, type: str) -> bool:
    """Whether condition ``type`` is present and not True (e.g. the agent was unreachable before)."""
    cond = condition(conds, type)
    return cond is not None and cond.get("status") != "True"


def camel(reason: str) -> str:
    """``quiesce_timeout`` → ``QuiesceTimeout``: thaw's error reasons as Kubernetes reasons."""
    return "".join(part[:1].upper() + part[1:] for part in reason.replace("-", "_").split("_") if part)


#: string limits of the CRDs' status schemas: a status the API server would reject must never be written
#: (kopf would drop the patch, and the object would look stuck in its previous phase)
STATUS_LIMITS = {"message": 4096, "progress": 256}


def fit_status(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` with its free-text fields cut to what the CRD schema allows (a CRIU log tail can be long)."""
    out = dict(status)
    for key, limit in STATUS_LIMITS.items():
        if isinstance(out.get(key), str) and len(out[key]) > limit:
            out[key] = out[key][:limit - 15] + " ... (cut)"
    return out


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _condition(type: str, status: str, reason: str, message: str, when: str, generation: int | None) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": type, "status": status, "reason": reason, "message": message[:32000],
                            "lastTransitionTime": when}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond
