"""The node agent's wire contract: its requests, results and errors (models.py) and its client (client.py).

One declaration of the API, imported by the agent that serves it, the CLI that calls it
(thaw.ops.AgentOperations) and the Kubernetes operator (thaw.k8s). It depends on nothing
above the typed floor (thaw.model, thaw.config, thaw.errors).
"""

from thaw.api.client import DEFAULT_SOCKET, AgentClient
from thaw.api.models import (
    API_VERSION,
    AgentStatus,
    ArtifactSummary,
    CanaryReport,
    Deleted,
    ErrorBody,
    ErrorDetail,
    Job,
    JobError,
    JobKind,
    JobResult,
    JobState,
    LaunchRequest,
    Progress,
    Recovery,
    Swept,
    SweepRequest,
    RestoreRequest,
    RestoreResult,
    SnapshotRequest,
    SnapshotResult,
    VerifyResult,
    Worker,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_SOCKET",
    "AgentClient",
    "AgentStatus",
    "ArtifactSummary",
    "CanaryReport",
    "Deleted",
    "ErrorBody",
    "ErrorDetail",
    "Job",
    "JobError",
    "JobKind",
    "JobResult",
    "JobState",
    "LaunchRequest",
    "Progress",
    "Recovery",
    "Swept",
    "SweepRequest",
    "RestoreRequest",
    "RestoreResult",
    "SnapshotRequest",
    "SnapshotResult",
    "VerifyResult",
    "Worker",
]
