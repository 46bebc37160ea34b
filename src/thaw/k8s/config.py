"""The operator's runtime configuration, built from its settings (thaw.config.OperatorSettings:
flags of ``thaw operator run``, or ``THAW_*`` variables from the ConfigMap)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thaw.config import OperatorSettings, first_token
from thaw.errors import ConfigError
from thaw.k8s.agents import AgentLookup


@dataclass(frozen=True)
class OperatorConfig:
    #: seconds between two looks at an object in progress (agent jobs are polled this often)
    poll: float = 1.0
    #: how to find the agents: the DaemonSet's pods (namespace, selector, owner, port, scheme); Node annotations
    #: only when told to
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

    @classmethod
    def of(cls, settings: OperatorSettings) -> OperatorConfig:
        lookup = AgentLookup(settings.agent_namespace, settings.agent_selector, settings.agent_port,
                             daemonset=settings.agent_daemonset, scheme="https" if settings.agent_ca else "http",
                             url_annotation=settings.agent_url_annotation)
        return cls(poll=settings.poll, token_file=settings.agent_token_file, namespaces=tuple(settings.namespaces),
                   agents=lookup, delete_timeout=settings.delete_timeout, liveness=settings.liveness,
                   peering=settings.peering or None, peering_lifetime=settings.peering_lifetime,
                   agent_ca=settings.agent_ca, agent_server_name=settings.agent_server_name)

    def token(self) -> str | None:
        """The first token of the token file (``identity:token`` or a bare token; # comments skipped)."""
        return first_token(self.token_file) if self.token_file is not None else None
