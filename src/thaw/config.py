"""thaw's settings, from arguments or the environment (``THAW_*``), validated in one place.

``Settings`` holds what every command needs (home, store, staging, CRIU, node) and one
section per component, each read from its own variables::

    Settings                 THAW_HOME, THAW_STORE, THAW_STAGING, THAW_CRIU, THAW_NODE, THAW_KEEP_MOUNTS,
                             THAW_GMS_DIR, THAW_GMS, THAW_GMS_ALLOW, THAW_GMS_DEVICES, THAW_GMS_BUDGET_GB, THAW_THP,
                             THAW_CGROUP_ROOT, THAW_SIGNING_KEY, THAW_TRUSTED_KEYS, THAW_WORKER_USER
    ├── agent   AgentSettings     the node agent's listeners: THAW_AGENT_SOCKET, _LISTEN, _TOKEN_FILE, _TLS_CERT,
    │                             _TLS_KEY, _PLAIN_TCP, _MAX_JOBS
    ├── client  ClientSettings    how the CLI reaches an agent: THAW_AGENT, THAW_AGENT_TOKEN, THAW_AGENT_URL,
    │                             THAW_AGENT_CA, THAW_AGENT_SERVER_NAME
    └── operator OperatorSettings the Kubernetes operator: THAW_NAMESPACES, THAW_POLL_SECONDS, THAW_AGENT_NAMESPACE,
                                  THAW_AGENT_SELECTOR, THAW_AGENT_PORT, THAW_AGENT_TOKEN_FILE, THAW_AGENT_CA,
                                  THAW_AGENT_SERVER_NAME, THAW_AGENT_DAEMONSET, THAW_AGENT_URL_ANNOTATION,
                                  THAW_DELETE_TIMEOUT, THAW_LIVENESS, THAW_PEERING, THAW_PEERING_LIFETIME,
                                  KUBECONFIG (and KUBERNETES_SERVICE_HOST: in a cluster)

Command-line options override the variables (the CLI passes what was given). Nothing else
in thaw reads the environment for a setting; a worker's own process reads what thaw hands it
through the worker SDK (thaw.worker.environment).
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from thaw.errors import ConfigError

DEFAULT_HOME = Path("/var/lib/thaw")
S = TypeVar("S", bound="BaseSettings")
DEFAULT_AGENT_SOCKET = Path("/run/thaw/agent.sock")


def _comma_list(v: object) -> object:
    """``"a, b"`` → ``["a", "b"]`` (a variable holds a list as commas); a list's items may hold commas too."""
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    if isinstance(v, list):
        return [p.strip() for item in v for p in str(item).split(",") if p.strip()]
    return v


class AgentSettings(BaseSettings):
    """The node agent (``thaw agent serve``): where it listens, whom it lets in, how much it runs at once."""

    model_config = SettingsConfigDict(env_prefix="THAW_AGENT_", extra="ignore")

    socket: Path | None = Field(default=DEFAULT_AGENT_SOCKET, description="unix socket to serve on (None: TCP only)")
    socket_group: str | None = Field(default=None, description="group allowed to use the socket (0660); else 0600")
    listen: str | None = Field(default=None, description="also serve on TCP HOST:PORT (needs token_file)")
    token_file: Path | None = Field(default=None, description="bearer tokens accepted over TCP, one per line")
    tls_cert: Path | None = Field(default=None, description="serve TCP with TLS: the certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="the TLS certificate's private key (PEM)")
    plain_tcp: bool = Field(default=False, description="serve TCP without TLS off loopback (behind a mesh that "
                            "encrypts)")
    max_jobs: int = Field(default=8, ge=1, le=256, description="operations run at once")

    def tcp(self) -> tuple[str, int] | None:
        """``listen`` as (host, port), or None."""
        if not self.listen:
            return None
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError("listen", f"{self.listen!r} is not HOST:PORT", hint="e.g. --listen 0.0.0.0:7480")
        return host.strip("[]") or "0.0.0.0", int(port)


class ClientSettings(BaseSettings):
    """How the CLI reaches a node agent: ``address`` named (unix socket or http://HOST:PORT), else the default socket.

    Fields are read from the variables their aliases name (and given by name in code: populate_by_name).
    """

    model_config = SettingsConfigDict(env_prefix="THAW_AGENT_", extra="ignore", populate_by_name=True)

    address: str | None = Field(default=None, validation_alias="THAW_AGENT",
                                description="a unix socket path or http://HOST:PORT")
    token: str | None = Field(default=None, description="bearer token sent over TCP")
    url: str | None = Field(default=None, description="`thaw agent status` over TCP: http://HOST:PORT")
    token_file: Path | None = Field(default=None, description="file whose first token is sent over TCP")
    ca: Path | None = Field(default=None, description="CA (PEM) of the agent's TLS certificate, for https:// "
                            "addresses (else the system's)")
    server_name: str | None = Field(default=None, description="the name the agent's certificate carries, when "
                                    "it is not the address's host (agents reached by pod IP share one)")

    def bearer(self) -> str | None:
        """The token to send: given directly, else the first one in ``token_file``."""
        if self.token:
            return self.token
        return first_token(self.token_file) if self.token_file else None


class OperatorSettings(BaseSettings):
    """The Kubernetes operator (``thaw operator run``), set by the thaw-settings ConfigMap in a cluster."""

    model_config = SettingsConfigDict(env_prefix="THAW_", extra="ignore", populate_by_name=True)

    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                       description="namespaces to watch; empty: the whole cluster")
    poll: float = Field(default=1.0, validation_alias="THAW_POLL_SECONDS",
                        description="seconds between two looks at an object in progress")
    agent_namespace: str = Field(default="thaw-system", description="namespace of the agent DaemonSet's pods")
    agent_selector: str = Field(default="app.kubernetes.io/name=thaw-agent", description="label selector of agent pods")
    agent_port: int = Field(default=7070, description="TCP port the agents listen on")
    agent_token_file: Path | None = Field(default=None, description="file with the agents' bearer token")
    agent_ca: Path | None = Field(default=None, description="CA of the agents' TLS certificate: speak https to "
                                  "them (none: http)")
    agent_server_name: str = Field(default="thaw-agent", description="the name the agents' certificate carries")
    agent_daemonset: str = Field(default="thaw-agent", description="the DaemonSet whose pods are the agents "
                                 "(pods that only carry the label are not trusted)")
    agent_url_annotation: bool = Field(default=False, description="also reach agents a Node's thaw.dev/agent-url "
                                       "annotation names (whoever may annotate Nodes can then redirect the "
                                       "operator)")
    delete_timeout: float = Field(default=600.0, description="seconds to keep trying to delete a snapshot's artifact")
    liveness: str | None = Field(default=None, description="kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    peering: str | None = Field(default=None, description="leader election among replicas through this "
                                                          "ClusterKopfPeering object (none: one replica)")
    peering_lifetime: int = Field(default=30, ge=5, le=3600,
                                  description="seconds before a silent leader is replaced")
    kubeconfig: Path | None = Field(default=None, validation_alias="KUBECONFIG",
                                    description="kubeconfig to use outside a cluster")
    in_cluster: bool = Field(default=False, validation_alias="KUBERNETES_SERVICE_HOST",
                             description="running in a pod: the service account's credentials")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return _comma_list(v)

    @field_validator("in_cluster", mode="before")
    @classmethod
    def _set(cls, v: object) -> object:
        # KUBERNETES_SERVICE_HOST holds an address: its presence is what counts
        return bool(v) if isinstance(v, str) and v.lower() not in ("false", "0") else v

    @field_validator("poll")
    @classmethod
    def _poll(cls, v: float) -> float:
        if not 0.05 <= v <= 300:
            raise ValueError(f"{v} is out of range (0.05-300 seconds)")
        return v


@dataclass(frozen=True)
class WorkerUser:
    """The unprivileged user workers run as (``THAW_WORKER_USER``; what it means: thaw.sandbox.user)."""

    uid: int
    gid: int

    @classmethod
    def parse(cls, text: str) -> WorkerUser:
        """``NAME``, ``UID`` or ``UID:GID``; ValueError naming what is wrong."""
        name, _, group = text.strip().partition(":")
        if name.isdigit():
            uid = int(name)
            gid = int(group) if group else _primary_gid(uid)
        else:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                raise ValueError(f"no user named {name!r} on this host") from None
            uid, gid = entry.pw_uid, entry.pw_gid
            if group:
                gid = int(group) if group.isdigit() else _group(group)
        if uid == 0:
            raise ValueError("the worker user must not be root (uid 0): leave THAW_WORKER_USER unset to run as root")
        return cls(uid, gid)

    def to_dict(self) -> dict[str, int]:
        return {"uid": self.uid, "gid": self.gid}


def _primary_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid  # a uid without a passwd entry (a container's numeric user): its own number as the group


def _group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"no group named {name!r} on this host") from None


class Settings(BaseSettings):
    """Where thaw keeps its state and artifacts, and which CRIU it runs; one section per component.

    ``home`` must be the same path on every node that restores a snapshot: a restored
    worker looks for its control directory under ``<home>/run`` (worker/protocol.py).
    """

    model_config = SettingsConfigDict(env_prefix="THAW_", extra="ignore")

    home: Path = Field(default=DEFAULT_HOME, description="state: instances, run links, staging")
    store: str | None = Field(default=None, description="artifact store URL; default <home>/artifacts")
    staging: Path | None = Field(default=None, description="node-local staging for fetched artifacts")
    criu: str | None = Field(default=None, description="CRIU binary or portable tree")
    cgroup_root: Path = Field(default=Path("/sys/fs/cgroup"), description="where the node's cgroup tree is "
                              "mounted (a restore into a pod joins the pod's cgroups under it)")
    node: str = Field(default_factory=socket.gethostname, description="this node's name")
    keep_mounts: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                        description="extra mounts kept in sandboxes")
    gms_dir: Path = Field(default=Path(""), description="the GPU memory services' sockets; default <home>/gms")
    gms: bool = Field(default=False, description="the agent runs a GPU memory service per GPU")
    gms_allow: Annotated[list[Path], NoDecode] = Field(default_factory=list,
                                                       description="directories the services may load weights from "
                                                       "(THAW_GMS_ALLOW: comma-separated)")
    gms_devices: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="GPUs (index or UUID; memfd:NAME for the CPU stand-in) the agent runs "
        "services for (THAW_GMS_DEVICES: comma-separated); default every GPU")
    gms_budget_gb: float | None = Field(default=None, description="GPU memory each service may keep weights in")
    thp: str | None = Field(default=None, description="transparent huge pages mode the agent sets at start "
                            "(always | madvise | never); None leaves the host's setting")
    signing_key: Path | None = Field(default=None, description="ed25519 private key (PEM) that signs every "
                                     "artifact this node publishes (`thaw keys generate`)")
    trusted_keys: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="ed25519 public keys (PEM files, comma-separated in THAW_TRUSTED_KEYS); "
        "when set, this node restores only artifacts signed by one of them")

    worker_user: str | None = Field(default=None, description="run workers as this unprivileged user (NAME, UID or "
                                    "UID:GID) with no capability; None runs them as root (docs/security.md)")

    @field_validator("worker_user")
    @classmethod
    def _worker_user(cls, v: str | None) -> str | None:
        if v:
            WorkerUser.parse(v)  # ValueError names what is wrong
        return v or None

    @property
    def worker(self) -> WorkerUser | None:
        """The user workers run as (``worker_user`` resolved), or None for root."""
        return WorkerUser.parse(self.worker_user) if self.worker_user else None

    agent: AgentSettings = Field(default_factory=AgentSettings)
    client: ClientSettings = Field(default_factory=ClientSettings)
    operator: OperatorSettings = Field(default_factory=OperatorSettings)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # each section reads its own variables: THAW_AGENT (the client's address) is not the `agent` section
        return init_settings, _EnvWithoutSections(settings_cls)

    @field_validator("keep_mounts", "trusted_keys", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return _comma_list(v)

    @field_validator("gms_allow", "gms_devices", mode="before")
    @classmethod
    def _split_paths(cls, v: object) -> object:
        return _comma_list(v)

    @field_validator("thp")
    @classmethod
    def _thp_mode(cls, v: str | None) -> str | None:
        if v is not None and v not in ("always", "madvise", "never"):
            raise ValueError(f"THP mode must be always, madvise or never, got {v!r}")
        return v

    @field_validator("home")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return Path(os.path.abspath(v))

    @model_validator(mode="after")
    def _gms_under_home(self) -> Settings:
        if self.gms_dir == Path(""):
            self.gms_dir = self.home / "gms"  # workers are told this path (THAW_GMS_DIR) at launch
        return self

    @cached_property
    def run_dir(self) -> Path:
        return self.home / "run"

    @cached_property
    def instances_dir(self) -> Path:
        return self.home / "instances"

    @property
    def store_url(self) -> str:
        return self.store or str(self.home / "artifacts")

    @property
    def staging_dir(self) -> Path:
        return self.staging or self.home / "staging"

    @property
    def scratch_dir(self) -> Path:
        """Where new artifacts are written before an object store uploads them: node-local, thaw's own."""
        return self.staging_dir / ".scratch"

    @property
    def agent_state_dir(self) -> Path:
        """Where the agent keeps jobs.db and audit.log."""
        return self.home / "agent"


def settings(**given: Any) -> Settings:
    """Settings from the environment, with what a command line gave (None: not given) on top."""
    return load(Settings, **given)


def load(kind: type[S], **given: Any) -> S:
    """Settings of ``kind`` from the environment and what was given (None: not given); ConfigError names a bad one."""
    try:
        return kind(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or kind.__name__
        raise ConfigError(where, first.get("msg", str(exc)),
                          hint="check the option, or its THAW_* variable (thaw.config)") from None


def first_token(path: Path) -> str:
    """The first token of a token file (``identity:token`` or a bare token; blank lines and # comments skipped)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("token-file", f"cannot read {path}: {exc.strerror}") from exc
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.partition(":")[2].strip() if ":" in line else line
    raise ConfigError("token-file", f"{path} holds no token")


class _EnvWithoutSections(EnvSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
            return None, field_name, False
        return super().get_field_value(field, field_name)
