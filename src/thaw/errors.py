"""The errors thaw raises.

Every error says what failed and what to do about it, and carries the facts a user
needs (the operation, the pid or artifact, CRIU's own message and log tail, the CUDA
error name). Foreign errors are mapped to the most specific type here with
``raise ... from exc``. Each error is *retryable* (the same request may succeed later: a busy
worker, an agent or store that does not answer) or *permanent* (asking again gives the same
answer); the operator and the CLI decide on ``retryable`` alone, never on a type list::

    ThawError                                                          retryable?
    ├── ConfigError            bad input or configuration (field, message)
    ├── HostError              the host cannot do this (no CRIU >= 4, not root, no GPU, ...)
    ├── WorkerError            the worker did not do its part
    │   ├── QuiesceTimeout     it never reached its quiesce point / never answered
    │   ├── ListenedEarly      a server run with --park-at-listen listened before it warmed up
    │   └── AnswerTimeout      it never answered a request after it left its quiesce point
    ├── CheckpointError        taking a snapshot failed (the worker was rolled back)
    ├── RestoreError           restoring failed (the artifact is unchanged)
    │   └── CanaryMismatch     the restored worker did not reproduce its recorded outputs
    ├── IntegrityError         an artifact's files do not match its manifest, or its manifest is malformed
    │   └── UntrustedArtifact  not the digest the caller expects, or not signed by a key this node trusts
    ├── StorageError           the artifact store failed a request (network, server, ...)  yes
    ├── ArtifactNotFound       no artifact of that name
    ├── WorkerNotFound         no (running) worker of that name on this node
    ├── JobNotFound            no agent job with that id
    ├── BusyError              another operation holds this worker                         yes
    ├── CriuError              a CRIU request failed (cr_errmsg + log tail)
    ├── CudaError              a CUDA driver call failed (call, pid, error name)
    ├── GmsError               the GPU memory service refused or failed a request
    │   └── GmsUnavailable     no GPU memory service answers for that GPU                  yes
    ├── AgentUnavailable       no thaw agent answers at that address                       yes
    ├── AgentError             an agent answered with an error thaw has no type for        5xx, 408, 429
    ├── NoPlacement            no node or GPU fits a restore (now)                         yes
    └── InjectedFault          a failure THAW_FAULT asked for (thaw.faults; tests only)
"""

from __future__ import annotations

from pathlib import Path


class ThawError(Exception):
    """Base of every error thaw raises on purpose."""

    #: short machine-readable reason, used as the ``reason`` label of failure metrics
    reason: str = "error"
    #: whether the same request may succeed later (see the module docstring)
    retryable: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(ThawError):
    """A setting or an argument is wrong; ``field`` names it."""

    reason = "config"

    def __init__(self, field: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{field}: {message}", hint=hint)
        self.field = field


class HostError(ThawError):
    """The host lacks something thaw needs (CRIU >= 4, root, a GPU, a kernel feature)."""

    reason = "host"


class WorkerError(ThawError):
    """The worker did not do its part (it died, or a hook of its failed)."""

    reason = "worker"


class QuiesceTimeout(WorkerError):
    """The worker did not reach its quiesce point, or did not answer, in time."""

    reason = "quiesce_timeout"


class ListenedEarly(WorkerError):
    """A server run with ``--park-at-listen`` opened its listening socket before warming up: it was not parked."""

    reason = "listened_early"


class AnswerTimeout(WorkerError):
    """The worker did not answer its first request (``thaw bench --answer-http``) in time."""

    reason = "answer_timeout"


class CheckpointError(ThawError):
    """Taking a snapshot failed. The worker was rolled back to running; nothing was published."""

    reason = "checkpoint"


class RestoreError(ThawError):
    """Restoring an artifact failed. The artifact is unchanged and no restored process is left."""

    reason = "restore"


class CanaryMismatch(RestoreError):
    """The restored worker's answers differ from those recorded at snapshot time."""

    reason = "canary_mismatch"

    def __init__(self, message: str, *, expected: object, got: object) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class IntegrityError(ThawError):
    """An artifact's files do not match the digests and sizes of its manifest, or the manifest is malformed."""

    reason = "integrity"

    def __init__(self, message: str, *, path: Path | str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or "the artifact is damaged: take a new snapshot or fetch it again")
        self.path = path


class UntrustedArtifact(IntegrityError):
    """The artifact is intact but not the one asked for: another digest, unsigned, or signed by an unknown key."""

    reason = "untrusted"


class StorageError(ThawError):
    """The artifact store failed a request (object store unreachable, server error, ...)."""

    reason = "storage"
    retryable = True


class ArtifactNotFound(ThawError):
    """No artifact of that name in the store."""

    reason = "not_found"


class WorkerNotFound(ThawError):
    """No worker of that name or id on this node (or it is no longer running)."""

    reason = "not_found"


class JobNotFound(ThawError):
    """No agent job with that id on this node."""

    reason = "not_found"


class BusyError(ThawError):
    """Another operation is already running on this worker or artifact."""

    reason = "busy"
    retryable = True


class CriuError(ThawError):
    """A CRIU request failed; carries CRIU's own message and the tail of its log."""

    reason = "criu"

    def __init__(self, operation: str, message: str, *, errno: int = 0, log_tail: str = "") -> None:
        text = f"criu {operation} failed: {message}"
        if log_tail:
            text += "\n--- criu log (tail) ---\n" + log_tail
        super().__init__(text)
        self.operation = operation
        self.criu_message = message
        self.errno = errno
        self.log_tail = log_tail


class CudaError(ThawError):
    """A CUDA driver call failed; names the call, the pid it was made for and the CUDA error."""

    reason = "cuda"

    def __init__(self, call: str, code: int, name: str, *, pid: int | None = None, detail: str = "") -> None:
        who = f" for pid {pid}" if pid is not None else ""
        text = f"{call}{who} failed: {name} ({code})"
        if detail:
            text += f": {detail}"
        super().__init__(text)
        self.call = call
        self.code = code
        self.name = name
        self.pid = pid


class GmsError(ThawError):
    """The GPU memory service (thaw.gms) refused or failed a request; ``code`` says why, for callers and metrics."""

    reason = "gms"

    def __init__(self, message: str, *, code: str = "error", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class GmsUnavailable(GmsError):
    """No GPU memory service listens for that GPU (not started, or it died)."""

    reason = "gms_unavailable"
    retryable = True

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, code="unavailable",
                         hint=hint or "start one with `thaw gms serve --gpu N` or let the agent start it "
                         "(THAW_GMS=1)")


class AgentUnavailable(ThawError):
    """No thaw agent answers at that address (not started, restarting, or unreachable)."""

    reason = "agent_unavailable"
    retryable = True


class AgentError(ThawError):
    """An agent refused or failed a request; ``status`` is the HTTP status, ``reason`` the agent's.

    ``kind`` names the thaw.errors type the agent raised (empty when it raised none: a bad
    route, a malformed answer); :meth:`original` gives that error back on this side.
    """

    def __init__(self, status: int, reason: str, message: str, *, hint: str | None = None, kind: str = "",
                 retryable: bool | None = None, fields: list[dict[str, object]] | None = None,
                 detail: dict[str, object] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.reason = reason
        self.kind = kind
        self.fields = fields or []
        self.detail = detail or {}
        # without the agent's word: it failed, or asks to be asked later, unlike a refusal of the request
        self.retryable = retryable if retryable is not None else status >= 500 or status in (408, 429)

    def original(self) -> ThawError:
        """The error the agent raised, as its own type (BusyError, ArtifactNotFound, ...), or this one."""
        if not self.kind or self.kind in ("ThawError", "AgentError"):
            return self
        return rebuild(self.kind, self.message, hint=self.hint, reason=self.reason, attributes=self.detail)


class NoPlacement(ThawError):
    """No node (or no GPU on the chosen node) fits a restore now; the message lists each candidate and why not."""

    reason = "no_placement"
    retryable = True  # capacity frees up, nodes and agents come


class InjectedFault(ThawError):
    """A failure THAW_FAULT asked for (thaw.faults: the fault-matrix tests only)."""

    reason = "injected"


def rebuild(kind: str, message: str, *, hint: str | None = None, reason: str | None = None,
            attributes: dict[str, object] | None = None) -> ThawError:
    """The error an agent raised, raised again on this side of its API: the same type, message and facts.

    ``kind`` is the class name the agent reported (thaw.api.ErrorDetail.kind); an unknown one
    gives a plain ThawError with the agent's reason. The constructors differ per type, so
    the instance is made without them and given the facts the agent sent.
    """
    cls = {c.__name__: c for c in _subclasses(ThawError)}.get(kind, ThawError)
    err = cls.__new__(cls)
    ThawError.__init__(err, message, hint=hint)
    if cls is ThawError and reason:
        err.reason = reason
    for name, value in (attributes or {}).items():
        if not name.startswith("_") and name not in ("message", "hint", "reason", "retryable"):
            setattr(err, name, value)
    return err


def _subclasses(cls: type[ThawError]) -> list[type[ThawError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out
