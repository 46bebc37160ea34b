"""Artifacts and where they live.

An artifact is a directory: CRIU images under ``images/`` and a versioned
``manifest.json`` listing every file with its size and digest. Stores publish
artifacts atomically and hand out verified local copies for restore.
"""

from __future__ import annotations

from pathlib import Path

from thaw.errors import ConfigError
from thaw.store.base import Fetched, Staged, Store
from thaw.store.directory import DirectoryStore
from thaw.model.manifest import Manifest, check_name

__all__ = ["DirectoryStore", "Fetched", "Manifest", "Staged", "Store", "check_name", "open_store"]


def open_store(url: str | Path, *, scratch: Path | None = None) -> Store:
    """A store from a URL: a path or ``dir:///path[?fetch=copy]`` (local or shared directory), ``s3://bucket/prefix``.

    ``scratch`` is a node-local directory where object stores write new artifacts
    before uploading them (a directory store stages on its own filesystem instead).
    """
    text = str(url)
    if text.startswith("s3://"):
        from thaw.store.s3 import S3Store  # boto3 is imported only when S3 is used

        return S3Store.from_url(text, scratch=scratch)
    if text.startswith("dir://"):
        text = text[len("dir://"):]
    if "://" in text:
        raise ConfigError("store", f"unknown store URL {url!r}", hint="use a directory path, dir:///path or s3://bucket/prefix")
    path, _, query = text.partition("?")
    options = dict(part.partition("=")[::2] for part in query.split("&") if part)
    if set(options) - {"fetch"} or options.get("fetch", "in-place") not in ("in-place", "copy"):
        raise ConfigError("store", f"unknown option in {url!r}",
                          hint="a directory store takes ?fetch=copy (stage on local disk before restore) or "
                          "?fetch=in-place")
    return DirectoryStore(path, copy=options.get("fetch") == "copy")
