"""The storage interface every artifact store implements.

A store holds published artifacts by name. Publishing is all-or-nothing: readers see
a complete, manifest-bearing artifact or nothing (a local or shared directory renames
a staged directory into place; object storage uploads the manifest last). Stores
never modify a published artifact; ``delete`` is the only way one goes away.
"""

from __future__ import annotations

import builtins
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from thaw import faults
from thaw.errors import ConfigError, IntegrityError
from thaw.model.manifest import FileEntry, Manifest, check_name
from thaw.store import owner
from thaw.store.signing import Signer, Trust


@dataclass
class Staged:
    """A new artifact being written: fill ``dir``, then the store publishes it (see Store.stage)."""

    name: str
    artifact_id: str
    dir: Path
    published: Manifest | None = None
    #: throughput and timing figures the store measured while publishing
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class Fetched:
    """A verified local copy of an artifact, ready for CRIU to read."""

    manifest: Manifest
    dir: Path
    #: True when ``dir`` is the store's own directory (nothing to clean up)
    in_place: bool
    stats: dict[str, float] = field(default_factory=dict)

    def cleanup(self) -> None:
        if not self.in_place:
            shutil.rmtree(self.dir, ignore_errors=True)


class Store(ABC):
    """Where artifacts live. Implementations: DirectoryStore (local or shared RWX), S3Store."""

    #: how to name this store in messages and manifests (e.g. dir:///var/lib/thaw/artifacts)
    url: str
    #: signs every artifact this store publishes (THAW_SIGNING_KEY); None publishes unsigned artifacts
    signer: Signer | None = None
    #: what ``fetch`` and ``verify`` accept (THAW_TRUSTED_KEYS): by default any intact artifact
    trust: Trust = Trust()

    @contextmanager
    def stage(self, name: str) -> Iterator[Staged]:
        """Give a directory to write a new artifact into; publish it when the block ends without error.

        The caller writes its files into ``staged.dir`` and sets ``staged.published`` to
        the manifest (without ``files``: the store fills them in) before leaving the block.
        On any error, or if no manifest was set, nothing becomes visible.
        """
        check_name(name)
        artifact_id = uuid.uuid4().hex
        staged = Staged(name=name, artifact_id=artifact_id, dir=self._staging_dir(name, artifact_id))
        try:
            yield staged
            if staged.published is None:
                raise RuntimeError("stage() block ended without a manifest: nothing published")
            faults.point("store.publish")
            staged.published = self._publish(staged)
        finally:
            shutil.rmtree(staged.dir, ignore_errors=True)

    @abstractmethod
    def _staging_dir(self, name: str, artifact_id: str) -> Path:
        """A fresh, empty, private directory for a new artifact, named by ``staging_name`` (on the same
        filesystem where that makes publish a rename)."""

    @abstractmethod
    def _publish(self, staged: Staged) -> Manifest:
        """Make ``staged`` visible under its name atomically; raise BusyError if the name is taken."""

    @abstractmethod
    def list(self) -> list[Manifest]:
        """Manifests of every published artifact, newest first."""

    @abstractmethod
    def manifest(self, name: str) -> Manifest:
        """The manifest of ``name``; ArtifactNotFound if there is none."""

    @abstractmethod
    def check_complete(self, name: str) -> Manifest:
        """The manifest of ``name`` once every file it lists is there with its size (no content is read)."""

    def fetch(self, name: str, staging_root: Path, *, expected_digest: str | None = None) -> Fetched:
        """A local, verified copy of ``name`` (the store's own directory when it is local).

        Refused (UntrustedArtifact) before anything is staged unless the manifest has the
        ``expected_digest`` (when given) and a signature this store's ``trust`` accepts.
        """
        manifest = self.manifest(name)
        self.trust.check(manifest, expected_digest=expected_digest)
        return self._fetch(manifest, Path(staging_root))

    def verify(self, name: str, *, expected_digest: str | None = None) -> Manifest:
        """Check ``name``'s digest and signature as ``fetch`` does, then every file against its manifest;
        IntegrityError names the first bad one."""
        manifest = self.manifest(name)
        self.trust.check(manifest, expected_digest=expected_digest)
        self._verify(manifest)
        return manifest

    @abstractmethod
    def _fetch(self, manifest: Manifest, staging_root: Path) -> Fetched:
        """The local, verified copy of the artifact ``manifest`` describes (already checked against ``trust``)."""

    @abstractmethod
    def _verify(self, manifest: Manifest) -> None:
        """Check every file of the artifact ``manifest`` describes."""

    @abstractmethod
    def delete(self, name: str) -> str:
        """Remove ``name`` so that it disappears at once for every reader; returns what went ("artifact", or
        "leftover" for a directory without a manifest that a store can tell is no publish in progress)."""

    def _seal(self, staged: Staged, files: builtins.list[FileEntry], **fields: object) -> Manifest:
        """The manifest to publish: the caller's, completed with the files, name and id, read back exactly as
        a reader will read it (what no reader would accept is never published), then signed."""
        assert staged.published is not None
        if not files:
            raise IntegrityError(f"nothing to publish: the staged artifact {staged.name!r} holds no files",
                                 path=staged.dir, hint="the snapshot produced no images; see its log")
        manifest = staged.published.model_copy(update={"files": files, "name": staged.name, "signature": None,
                                                       "artifact_id": staged.artifact_id, **fields})
        manifest = Manifest.parse(manifest.to_json(), where=f"the new manifest of {staged.name!r}", name=staged.name)
        return self.signer.sign(manifest) if self.signer else manifest

    def abandon(self, name: str, artifact_id: str, staged_dir: Path) -> None:
        """Remove what an interrupted ``stage(name)`` (crashed writer) left behind; never a published artifact.

        Called by whoever recorded the Staged (the agent's job journal) after a crash, so
        that exactly that writer's debris goes, and no other node's upload in progress.
        """
        shutil.rmtree(staged_dir, ignore_errors=True)

    def sweep(self, older_than_s: float | None = None) -> int:
        """Remove what crashed writers left in this store's staging; returns how many entries went.

        An entry goes when its owner (named in it: owner.py) is dead and no process uses it
        any more (CRIU may write on after the thaw that started it died). With
        ``older_than_s``, entries whose owner this node cannot judge (another node, an
        earlier boot, an unnamed entry) go too once older than that.
        """
        gone = 0
        for entry in self._staging_entries():
            if owner.abandoned(entry, older_than_s):
                name, artifact_id = parse_staging_name(entry.name)
                if name and artifact_id:
                    self.abandon(name, artifact_id, entry)
                else:
                    shutil.rmtree(entry, ignore_errors=True)
                gone += 1
        return gone

    def _staging_entries(self) -> builtins.list[Path]:
        """The directories this store stages new artifacts in (swept by ``sweep``)."""
        return []

    def exists(self, name: str) -> bool:
        from thaw.errors import ArtifactNotFound

        try:
            self.manifest(name)
        except ArtifactNotFound:
            return False
        return True


def staging_name(name: str, artifact_id: str) -> str:
    """``<owner>.<artifact id>.<name>``: the directory a new artifact is staged in says who writes it and what."""
    return f"{owner.tag()}.{artifact_id}.{name}"


def parse_staging_name(entry: str) -> tuple[str | None, str | None]:
    """(name, artifact id) from a ``staging_name``; (None, None) for anything else."""
    parts = entry.split(".", 2)
    if len(parts) == 3 and re.fullmatch(r"[0-9a-f]{32}", parts[1]):
        try:
            return check_name(parts[2]), parts[1]
        except ConfigError:
            pass
    return None, None

