"""Artifacts and where they live.

An artifact is a directory: CRIU images under ``images/`` and a versioned
``manifest.json`` listing every file with its size and digest. Stores publish
artifacts atomically and hand out verified local copies for restore. What a store
holds is treated as hostile until checked (docs/security.md): manifests are
validated on read, files are opened without following symlinks, every chunk is
checked before it is written, and a node can require signed artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from thaw.errors import ConfigError
from thaw.store.base import Fetched, Staged, Store
from thaw.store.directory import DirectoryStore
from thaw.store.manifest import Manifest, check_name, parse_reference
from thaw.store.signing import Signer, Trust

if TYPE_CHECKING:
    from thaw.config import Settings

__all__ = ["DirectoryStore", "Fetched", "Manifest", "Signer", "Staged", "Store", "Trust", "check_name",
           "open_store", "parse_reference", "store_for"]


def store_for(settings: Settings) -> Store:
    """The store ``settings`` name, with this node's scratch directory, signing key and trusted keys."""
    return open_store(settings.store_url, scratch=settings.scratch_dir,
                      signer=Signer.load(settings.signing_key) if settings.signing_key else None,
                      trust=Trust.load(settings.trusted_keys))


def open_store(url: str | Path, *, scratch: Path | None = None, signer: Signer | None = None,
               trust: Trust | None = None) -> Store:
    """A store from a URL: a path or ``dir:///path[?fetch=copy]`` (local or shared directory), ``s3://bucket/prefix``.

    ``scratch`` is a node-local directory where object stores write new artifacts
    before uploading them (a directory store stages on its own filesystem instead).
    ``signer`` signs what the store publishes; ``trust`` says what it accepts (thaw.store.signing).
    """
    text = str(url)
    if text.startswith("s3://"):
        from thaw.store.s3 import S3Store  # boto3 is imported only when S3 is used

        return S3Store.from_url(text, scratch=scratch, signer=signer, trust=trust)
    if text.startswith("dir://"):
        text = text[len("dir://"):]
    if "://" in text:
        raise ConfigError("store", f"unknown store URL {url!r}", hint="use a directory path, dir:///path or s3://bucket/prefix")
    path, _, query = text.partition("?")
    options = dict(part.partition("=")[::2] for part in query.split("&") if part)
    if set(options) - {"fetch"} or options.get("fetch", "in-place") not in ("in-place", "copy"):
        raise ConfigError("store", f"unknown option in {url!r}",
                          hint="a directory store takes ?fetch=copy (stage on local disk before restore) or ?fetch=in-place")
    return DirectoryStore(path, copy=options.get("fetch") == "copy", signer=signer, trust=trust)
