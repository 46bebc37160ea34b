"""The operator's settings: flags of ``thaw operator run``, or ``THAW_*`` variables from the ConfigMap."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thaw.errors import ConfigError
from thaw.k8s.cluster import AgentLookup


@dataclass(frozen=True)
class OperatorConfig:
    #: seconds between two looks at an object in progress (agent jobs are polled this often)
    poll: float = 1.0
    #: how to find the agents: DaemonSet pods (namespace, selector, port); Node annotations override
    agents: AgentLookup = field(default_factory=AgentLookup)
    #: file holding the bearer token the agents require (mounted from the thaw-agent-token Secret)
    token_file: Path | None = None
    #: namespaces to watch; empty: the whole cluster
    namespaces: tuple[str, ...] = ()
    #: give up deleting an artifact (the object goes, the artifact stays, a Warning says so) after this long
    delete_timeout: float = 600.0
    #: kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz (None: off)
    liveness: str | None = None
    #: leader election among replicas: the name of a ClusterKopfPeering object (None: one replica, standalone).
    #: Each replica takes a random priority; all but the highest pause while it is alive.
    peering: str | None = None
    #: seconds a replica's peering record counts as alive: how long a killed leader's work waits for another
    peering_lifetime: int = 30
    #: the CA of the agents' TLS certificate (PEM, from the thaw-agent-tls Secret): set, the operator speaks
    #: https to agents and checks their certificate against it and ``agent_server_name``
    agent_ca: Path | None = None
    agent_server_name: str = "thaw-agent"

    def __post_init__(self) -> None:
        if not 0.05 <= self.poll <= 300:
            raise ConfigError("poll", f"{self.poll} is out of range", hint="use 0.05-300 seconds")
        if not 5 <= self.peering_lifetime <= 3600:
            raise ConfigError("peering_lifetime", f"{self.peering_lifetime} is out of range", hint="use 5-3600 seconds")
        if self.agent_ca is not None and not Path(self.agent_ca).is_file():
            raise ConfigError("agent_ca", f"{self.agent_ca} does not exist",
                              hint="mount ca.crt of the thaw-agent-tls Secret (docs/security.md)")
        if self.token_file is not None and not Path(self.token_file).is_file():
            raise ConfigError("token_file", f"{self.token_file} does not exist",
                              hint="mount the thaw-agent-token Secret, or leave it unset for agents without a token")

    def token(self) -> str | None:
        """The first token of the token file (``identity:token`` or a bare token; # comments skipped)."""
        if self.token_file is None:
            return None
        for line in Path(self.token_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return line.partition(":")[2].strip() if ":" in line else line
        raise ConfigError("token_file", f"{self.token_file} holds no token")
