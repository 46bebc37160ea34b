"""A sandbox's layout as data: which mounts it keeps and which namespaces are its own.

thaw.sandbox plans a layout for a launch (``plan``) and builds it; the instance record
and the manifest carry it, so that a restore rebuilds exactly what CRIU dumped. The
strings CRIU takes for external mounts are derived here, in one place, for both sides.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: kept mounts CRIU recreates itself rather than binding from the host
NATIVE = ("/", "/proc", "/sys")
#: the key CRIU records a sandbox's network namespace under (a restore plugs a fresh one in)
NET_KEY = "thaw-netns"


class SandboxLayout(BaseModel):
    """Namespaces and mounts of a sandbox."""

    # part of a manifest, covered by its digest: an unknown field is refused (thaw.model.manifest._Strict)
    model_config = ConfigDict(frozen=True, extra="forbid")

    keep: list[str] = Field(default_factory=list, description="mountpoints kept besides / and /proc")
    private_net: bool = True
    private_shm: bool = Field(default=False, description="a fresh tmpfs on /dev/shm, dumped and restored with it")

    def external(self) -> list[str]:
        """Kept mountpoints that CRIU must treat as external bind mounts."""
        return [m for m in self.keep if m not in NATIVE]

    @staticmethod
    def key(mountpoint: str) -> str:
        """The external key of a mountpoint: stable, and free of CRIU's separators."""
        return "thaw" + mountpoint.replace("/", "_").replace(":", "_")

    def dump_externals(self) -> list[str]:
        return [f"mnt[{m}]:{self.key(m)}" for m in self.external()]

    def restore_externals(self) -> list[str]:
        return [f"mnt[{self.key(m)}]:{m}" for m in self.external()]


class SandboxRecord(SandboxLayout):
    """What a manifest records of the snapshotted sandbox: its layout, plus what a restore plugs in anew."""

    net_key: str = Field(default=NET_KEY, description="CRIU's key of the external network namespace")
    stdio: list[str] = Field(default_factory=list,
                             description="host paths of the worker's stdout/stderr (a restore opens its own log)")
    run_dir: str | None = Field(default=None, max_length=4096,
                                description="a pod worker's THAW_RUN_DIR, which its memory holds: a restore into a "
                                            "pod needs the same one (pipeline/placement.py)")

    @property
    def layout(self) -> SandboxLayout:
        return SandboxLayout(keep=self.keep, private_net=self.private_net, private_shm=self.private_shm)


__all__ = ["NATIVE", "NET_KEY", "SandboxLayout", "SandboxRecord"]
