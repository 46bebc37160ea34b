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
import time
import uuid
from pathlib import Path

from thaw.errors import ArtifactNotFound, BusyError, ConfigError, IntegrityError
from thaw.store.base import Fetched, Staged, Store
from thaw.store.digest import copy_verified, describe_tree, verify_tree
from thaw.model.manifest import MANIFEST, Manifest, check_name


class DirectoryStore(Store):
    """Artifacts in a directory. ``copy=True`` (``dir:///path?fetch=copy``) fetches into node-local
    staging before a restore: for a shared volume (NFS, CephFS), where CRIU should read local disk
    or tmpfs rather than the network; each byte is read once, checked and written by parallel readers.
    """

    def __init__(self, root: Path | str, *, copy: bool = False) -> None:
        self.root = Path(root).absolute()
        self.copy = copy
        self.url = f"dir://{self.root}" + ("?fetch=copy" if copy else "")
        try:
            for sub in (".staging", ".trash"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise ConfigError("store", f"cannot write to {self.root}: {exc.strerror}",
                              hint="choose a writable directory (--store) or run as root") from exc
        except OSError as exc:
            raise ConfigError("store", f"cannot use {self.root}: {exc.strerror}") from exc

    def _staging_dir(self) -> Path:
        d = self.root / ".staging" / uuid.uuid4().hex
        d.mkdir()
        return d

    def _publish(self, staged: Staged) -> Manifest:
        assert staged.published is not None
        t0 = time.perf_counter()
        files = describe_tree(staged.dir)
        manifest = staged.published.model_copy(update={"files": files, "name": staged.name,
                                                        "artifact_id": staged.artifact_id})
        manifest.write(staged.dir)
        _fsync_tree(staged.dir)
        staged.stats["digest_s"] = time.perf_counter() - t0
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
            if d.name.startswith(".") or not (d / MANIFEST).is_file():
                continue
            try:
                out.append(Manifest.read(d))
            except IntegrityError:
                continue  # listed by `thaw verify`, never offered for restore
        return sorted(out, key=lambda m: m.created_at, reverse=True)

    def path(self, name: str) -> Path:
        check_name(name)
        d = self.root / name
        if not (d / MANIFEST).is_file():
            raise ArtifactNotFound(f"no artifact named {name!r} in {self.url}", hint="`thaw ls` lists the artifacts")
        return d

    def manifest(self, name: str) -> Manifest:
        return Manifest.read(self.path(name))

    def fetch(self, name: str, staging_root: Path) -> Fetched:
        d = self.path(name)
        t0 = time.perf_counter()
        manifest = Manifest.read(d)
        if not self.copy:
            verify_tree(d, manifest)
            dt = time.perf_counter() - t0
            return Fetched(manifest, d, in_place=True,
                           stats={"verify_s": dt, "read_gbps": manifest.size / dt / 1e9 if dt > 0 else 0.0})
        local = Path(staging_root) / f"{name}-{manifest.artifact_id[:8]}-{uuid.uuid4().hex[:8]}"
        local.mkdir(parents=True)
        try:
            copy_verified(d, local, manifest)
            manifest.write(local)
        except BaseException:
            shutil.rmtree(local, ignore_errors=True)
            raise
        dt = time.perf_counter() - t0
        return Fetched(manifest, local, in_place=False,
                       stats={"fetch_s": dt, "bytes": manifest.size,
                              "read_gbps": manifest.size / dt / 1e9 if dt > 0 else 0.0})

    def verify(self, name: str) -> Manifest:
        d = self.path(name)
        manifest = Manifest.read(d)
        verify_tree(d, manifest)
        return manifest

    def delete(self, name: str) -> None:
        d = self.path(name)
        trash = self.root / ".trash" / uuid.uuid4().hex
        os.rename(d, trash)  # gone for every reader at once; the slow removal happens after
        shutil.rmtree(trash, ignore_errors=True)

    def sweep(self, older_than_s: float = 0.0) -> int:
        """Remove staging and trash debris left by crashed writers; returns how many entries went."""
        n = 0
        now = time.time()
        for sub in (".staging", ".trash"):
            for d in (self.root / sub).iterdir():
                if now - d.stat().st_mtime >= older_than_s:
                    shutil.rmtree(d, ignore_errors=True)
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
