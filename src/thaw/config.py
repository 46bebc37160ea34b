"""thaw's settings, from arguments or the environment (``THAW_*``), validated in one place."""

from __future__ import annotations

import grp
import os
import pwd
import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    """Where thaw keeps its state and artifacts, and which CRIU it runs.

    ``home`` must be the same path on every node that restores a snapshot: a restored
    worker looks for its control directory under ``<home>/run`` (worker/protocol.py).
    """

    model_config = SettingsConfigDict(env_prefix="THAW_", extra="ignore")

    home: Path = Field(default=Path("/var/lib/thaw"), description="state: instances, run links, staging")
    store: str | None = Field(default=None, description="artifact store URL; default <home>/artifacts")
    staging: Path | None = Field(default=None, description="node-local staging for fetched artifacts")
    criu: str | None = Field(default=None, description="CRIU binary or portable tree")
    node: str = Field(default_factory=socket.gethostname, description="this node's name")
    keep_mounts: list[str] = Field(default_factory=list, description="extra mounts kept in sandboxes")
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

    @field_validator("keep_mounts", "trusted_keys", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return [p for p in v.split(",") if p] if isinstance(v, str) else v

    @field_validator("gms_allow", "gms_devices", mode="before")
    @classmethod
    def _split_paths(cls, v: object) -> object:
        return [p for p in v.split(",") if p] if isinstance(v, str) else v

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
