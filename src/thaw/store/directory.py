"""A store in a directory: node-local disk, or a shared ReadWriteMany volume used by many agents.

Layout::

    <root>/<name>/manifest.json, images/...   published artifacts
    <root>/.staging/<artifact-id>/            artifacts being written (same filesystem)
    <root>/.trash/<uuid>/                     artifacts being deleted

Publishing is one ``rename(2)`` of the staged directory to ``<root>/<name>``. Renaming a
directory onto an existing non-empty directory fails (ENOTEMPTY/EEXIST), and a published
artifact always holds its manifest, so two agents publishing the same name at once
cannot corrupt each other: one wins, the other gets BusyError. Readers never see a
partial artifact, and a crash leaves only ``.staging`` debris, which ``sweep`` removes.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
import uuid
from pathlib import Path

from thaw import faults
from thaw.errors import ArtifactNotFound, BusyError, ConfigError, IntegrityError
from thaw.store.base import Fetched, Staged, Store, staging_name
from thaw.store.confined import DIR_MODE, Tree, new_private_dir, private_dir, read_manifest, write_manifest
from thaw.store.digest import copy_verified, describe_tree, verify_tree
from thaw.model.manifest import MANIFEST, Manifest, check_name
from thaw.store.signing import Signer, Trust


class DirectoryStore(Store):
    """Artifacts in a directory. ``copy=True`` (``dir:///path?fetch=copy``) fetches into node-local
    staging before a restore: for a shared volume (NFS, CephFS), where CRIU should read local disk
    or tmpfs rather than the network; each byte is read once, checked and written by parallel readers.

    Reading in place trusts that nobody writes the artifact while CRIU reads it (it is verified
    first, but CRIU opens the files again): right for a node's own store, which only root writes.
    A volume that others can write is read with ``fetch=copy`` (docs/security.md).
    """

    def __init__(self, root: Path | str, *, copy: bool = False, signer: Signer | None = None,
                 trust: Trust | None = None) -> None:
        self.root = Path(root).absolute()
        self.copy = copy
        self.signer = signer
        self.trust = trust or Trust()
        self.url = f"dir://{self.root}" + ("?fetch=copy" if copy else "")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in (".staging", ".trash"):
                # artifacts in flight are process memory: 0700; on a shared volume another node's root may own it
                private_dir(self.root / sub, what="store", check_owner=False)
        except PermissionError as exc:
            raise ConfigError("store", f"cannot write to {self.root}: {exc.strerror}",
                              hint="choose a writable directory (--store) or run as root") from exc
        except OSError as exc:
            raise ConfigError("store", f"cannot use {self.root}: {exc.strerror}") from exc

    def _staging_dir(self, name: str, artifact_id: str) -> Path:
        d = self.root / ".staging" / staging_name(name, artifact_id)
        d.mkdir(mode=DIR_MODE)
        return d

    def _staging_entries(self) -> list[Path]:
        return sorted((self.root / ".staging").iterdir())

    def _publish(self, staged: Staged) -> Manifest:
        t0 = time.perf_counter()
        manifest = self._seal(staged, describe_tree(staged.dir, make_private=True))
        write_manifest(manifest, staged.dir)
        _fsync_tree(staged.dir)
        staged.stats["digest_s"] = time.perf_counter() - t0
        faults.point("store.rename")  # everything written and durable, not yet visible
        target = self.root / staged.name
        try:
            os.rename(staged.dir, target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise BusyError(f"an artifact named {staged.name!r} already exists in {self.url}",
                                hint="pick another name, or `thaw rm` the old one first") from exc
            raise
        _fsync_dir(self.root)
        return manifest

    def list(self) -> list[Manifest]:
        out = []
        for d in self.root.iterdir():
            if d.name.startswith("."):
                continue
            try:
                out.append(read_manifest(d, name=check_name(d.name)))
            except (IntegrityError, ConfigError):
                continue  # not an artifact, or a damaged one: named by `thaw verify`, never offered for restore
        return sorted(out, key=lambda m: m.created_at, reverse=True)

    def path(self, name: str) -> Path:
        check_name(name)
        d = self.root / name
        if not os.path.lexists(d / MANIFEST):
            raise ArtifactNotFound(f"no artifact named {name!r} in {self.url}", hint="`thaw ls` lists the artifacts")
        return d

    def manifest(self, name: str) -> Manifest:
        return read_manifest(self.path(name), name=name)

    def check_complete(self, name: str) -> Manifest:
        d = self.path(name)
        manifest = read_manifest(d, name=name)
        try:
            with Tree.open(d) as tree:
                for entry in manifest.files:
                    if (size := tree.size(entry.path)) != entry.size:
                        raise IntegrityError(f"{entry.path} has {size} bytes, the manifest says {entry.size}")
        except IntegrityError as exc:
            raise IntegrityError(f"artifact {name!r} is incomplete: {exc.message}", path=d,
                                 hint=f"it was half-deleted or damaged; `thaw rm {name}` removes it") from exc
        return manifest

    def _fetch(self, manifest: Manifest, staging_root: Path) -> Fetched:
        d = self.root / manifest.name
        t0 = time.perf_counter()
        if not self.copy:
            verify_tree(d, manifest)
            dt = time.perf_counter() - t0
            return Fetched(manifest, d, in_place=True,
                           stats={"verify_s": dt, "read_gbps": manifest.size / dt / 1e9 if dt > 0 else 0.0})
        local = new_private_dir(staging_root, prefix=f"{manifest.name}.{manifest.artifact_id[:8]}.")
        try:
            faults.point("store.fetch")
            copy_verified(d, local, manifest)
            write_manifest(manifest, local)
        except BaseException:
            shutil.rmtree(local, ignore_errors=True)
            raise
        dt = time.perf_counter() - t0
        return Fetched(manifest, local, in_place=False,
                       stats={"fetch_s": dt, "bytes": manifest.size,
                              "read_gbps": manifest.size / dt / 1e9 if dt > 0 else 0.0})

    def _verify(self, manifest: Manifest) -> None:
        verify_tree(self.root / manifest.name, manifest)

    def delete(self, name: str) -> str:
        """Remove the artifact ``name``, or a leftover directory of that name without a manifest.

        A leftover (a half-deleted artifact, a hand-made copy) is no publish in progress: publishing
        is one rename of a directory that already holds its manifest. Symlinks and files are left alone.
        """
        check_name(name)
        d = self.root / name
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact named {name!r} in {self.url}",
                                   hint="`thaw ls` lists the artifacts") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ArtifactNotFound(f"{d} is not an artifact (not a directory): thaw leaves it alone",
                                   hint="remove it by hand if it should not be there")
        kind = "artifact" if os.path.lexists(d / MANIFEST) else "leftover"
        trash = self.root / ".trash" / uuid.uuid4().hex
        os.rename(d, trash)  # gone for every reader at once; the slow removal happens after
        shutil.rmtree(trash, ignore_errors=True)
        return kind

    def sweep(self, older_than_s: float | None = None) -> int:
        """Remove staging debris of crashed writers (Store.sweep), and deleted artifacts a crash left in .trash."""
        n = super().sweep(older_than_s)
        for d in (self.root / ".trash").iterdir():
            shutil.rmtree(d, ignore_errors=True)  # renamed away from its name: no reader or writer can want it
            n += 1
        return n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    # a published artifact must survive a node crash: its data is durable before the rename makes it visible
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))
