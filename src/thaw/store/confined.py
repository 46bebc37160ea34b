"""Files inside one directory, and nowhere else: opens below a directory descriptor that never follow a symlink.

An artifact's tree may have been written by someone else (a shared volume, a bucket
whoever can write). Everything thaw reads from such a tree, and everything it writes
into staging, goes through a ``Tree``: the directory is opened once, and each path below
it is opened one component at a time relative to its parent's descriptor with
O_NOFOLLOW (openat-style), so a symlink anywhere, planted before or swapped in during
the operation, fails the open instead of leading elsewhere. A tree holds only
directories and regular files; anything else is refused by name. New files are created
with O_EXCL, 0600, in 0700 directories: CRIU images are process memory, i.e. secrets.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from types import TracebackType

from thaw.errors import ConfigError, IntegrityError
from thaw.model.manifest import MANIFEST, MAX_DEPTH, MAX_MANIFEST_BYTES, Manifest, check_relative
from thaw.store import owner

FILE_MODE, DIR_MODE = 0o600, 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone put in place of a file must fail the type check, not hang
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def private_dir(path: Path, *, what: str = "staging", check_owner: bool = True) -> Path:
    """``path`` as a directory only this user can use: created 0700, or checked (no symlink, ours) and made 0700.

    ``check_owner=False`` for a shared volume, where another node's root may own it (it is still made 0700).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise ConfigError(what, f"{path} is a symlink or not a directory: refusing to stage there",
                          hint="remove it; thaw creates a private directory of its own") from exc
    try:
        st = os.fstat(fd)
        if check_owner and st.st_uid != os.geteuid():
            raise ConfigError(what, f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): "
                              "another user could read or replace what thaw stages there",
                              hint="remove it, or give thaw a directory of its own (THAW_HOME, THAW_STAGING)")
        if stat.S_IMODE(st.st_mode) != DIR_MODE and st.st_uid == os.geteuid():
            os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)
    return path


def new_private_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory under ``parent`` (made private first) with an unpredictable name, mode 0700.

    The name starts with this process's owner tag (owner.py): what a crash leaves there is swept later.
    """
    private_dir(parent)
    return Path(tempfile.mkdtemp(prefix=f"{owner.tag()}.{prefix}", dir=parent))


def read_small_file(path: Path, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``path``; neither the file nor its directory may be a symlink."""
    path = Path(path)
    with Tree.open(path.parent) as tree:
        fd = tree.open_file(path.name)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    finally:
        os.close(fd)


class Tree:
    """A directory opened once; every path below it resolved from that descriptor, never through a symlink."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = Path(path)
        self.fd = fd

    @classmethod
    def open(cls, path: Path) -> Tree:
        try:
            return cls(path, os.open(path, _DIR_FLAGS))
        except FileNotFoundError as exc:
            raise IntegrityError(f"{path} is missing", path=path) from exc
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise IntegrityError(f"{path} is a symlink or not a directory: an artifact is a directory of "
                                     "its own", path=path) from exc
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ---- reading ------------------------------------------------------------------------------

    def open_file(self, rel: str, flags: int = os.O_RDONLY) -> int:
        """A descriptor of the regular file ``rel`` (the caller closes it)."""
        parent, leaf = self._parent(rel)
        try:
            fd = os.open(leaf, flags | _FILE_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise self._error(exc, rel) from exc
        finally:
            os.close(parent)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self._refused(rel, st.st_mode)
        return fd

    def size(self, rel: str) -> int:
        fd = self.open_file(rel)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def files(self, *, make_private: bool = False) -> list[str]:
        """Every regular file below, sorted, except the top-level manifest; IntegrityError names anything else.

        With ``make_private``, every directory becomes 0700 and every file 0600 on the way.
        """
        found: list[str] = []
        self._walk(os.dup(self.fd), "", 0, found, make_private)
        return sorted(found)

    def _walk(self, fd: int, prefix: str, depth: int, found: list[str], make_private: bool) -> None:
        try:
            if make_private:
                os.fchmod(fd, DIR_MODE)
            with os.scandir(fd) as entries:
                names = [e.name for e in entries]
            for name in names:
                rel = prefix + name
                try:
                    check_relative(rel)
                except ValueError as exc:
                    raise IntegrityError(f"{self.path}: {exc}: it cannot be part of an artifact",
                                         path=self.path) from None
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if depth + 1 >= MAX_DEPTH:
                        raise IntegrityError(f"{self.path / rel} is nested too deeply for an artifact", path=self.path)
                    try:
                        sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        raise self._error(exc, rel) from exc
                    self._walk(sub, rel + "/", depth + 1, found, make_private)
                elif stat.S_ISREG(st.st_mode):
                    if rel != MANIFEST:
                        found.append(rel)
                    if make_private:
                        self._chmod_file(fd, name, rel)
                else:
                    raise self._refused(rel, st.st_mode)
        finally:
            os.close(fd)

    def _chmod_file(self, dir_fd: int, name: str, rel: str) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise self._error(exc, rel) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._refused(rel, os.fstat(fd).st_mode)
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)

    # ---- writing (into a private staging directory) -------------------------------------------

    def create_file(self, rel: str, size: int) -> None:
        """Create ``rel`` (and its directories) new, 0600, ``size`` bytes long; it must not exist yet."""
        parent, leaf = self._parent(rel, create=True)
        try:
            fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE_FLAGS, FILE_MODE, dir_fd=parent)
        except OSError as exc:
            raise self._error(exc, rel) from exc
        finally:
            os.close(parent)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def write_at(self, rel: str, offset: int, data: bytes | memoryview) -> None:
        fd = self.open_file(rel, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        finally:
            os.close(fd)

    # ---- helpers ---------------------------------------------------------------------------------

    def _parent(self, rel: str, *, create: bool = False) -> tuple[int, str]:
        """A descriptor of ``rel``'s directory (the caller closes it) and ``rel``'s last component."""
        try:
            parts = check_relative(rel).split("/")
        except ValueError as exc:
            raise IntegrityError(f"{self.path}: {exc}", path=self.path) from None
        fd = os.dup(self.fd)
        for i, part in enumerate(parts[:-1]):
            try:
                if create:
                    try:
                        os.mkdir(part, DIR_MODE, dir_fd=fd)
                    except FileExistsError:
                        pass
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                raise self._error(exc, "/".join(parts[: i + 1])) from exc
            os.close(fd)
            fd = sub
        return fd, parts[-1]

    def _error(self, exc: OSError, rel: str) -> Exception:
        where = self.path / rel
        if exc.errno == errno.ENOENT:
            return IntegrityError(f"file {rel} is missing ({where})", path=where)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return IntegrityError(f"{where} is a symlink or not a directory: an artifact holds only regular files "
                                  "and directories", path=where)
        if exc.errno == errno.EEXIST:
            return IntegrityError(f"{where} already exists in a fresh staging directory", path=where)
        return exc

    def _refused(self, rel: str, mode: int) -> IntegrityError:
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        return IntegrityError(f"{self.path / rel} is {kind}: an artifact holds only regular files and directories",
                              path=self.path / rel)


_KINDS: dict[int, str] = {stat.S_IFLNK: "a symlink", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
                          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def read_manifest(directory: Path, *, name: str | None = None) -> Manifest:
    """The manifest in ``directory`` (opened without following a symlink); ``name`` as for ``Manifest.parse``."""
    path = Path(directory) / MANIFEST
    return Manifest.parse(read_small_file(path, MAX_MANIFEST_BYTES + 1), where=str(path), name=name)


def write_manifest(manifest: Manifest, directory: Path) -> None:
    """Write ``manifest`` into ``directory`` (never through a symlink), readable by this node's user only."""
    fd = os.open(Path(directory) / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
