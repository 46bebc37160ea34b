"""A store in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, ...), through boto3.

URL: ``s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&workers=16``.
Credentials come from the standard places (``AWS_ACCESS_KEY_ID`` ..., ``~/.aws``, an
instance role); the URL never carries secrets.

Layout under the prefix::

    <name>/manifest.json                 the artifact: present only once every file is uploaded
    <name>/<artifact-id>/<file path>     its files (images/...)

Files live under the artifact id, not the name, so two publishers racing for one name
never overwrite each other's data: whichever manifest lands describes a complete set of
files. The manifest is uploaded last, with a conditional put (``If-None-Match: *``) where
the server supports it, so exactly one publisher wins and the other gets BusyError and
removes its files. A server that ignores the condition lets the last manifest win; its
data is still complete, but the loser believes it published (see docs/storage.md).

Transfers are parallel and chunked. Uploads are multipart, with parts aligned to the
manifest's chunks: each chunk is re-hashed as it is read and compared with the digest
computed before the upload (the file did not change under us), each part carries its
Content-MD5, and the ETag the server returns must be that MD5 where the server reports
one (the server stored what we sent). Downloads are ranged GETs of one chunk each, each
checked against the manifest's chunk digest before it is written into a private (0700)
staging directory through no-follow opens (confined.Tree). New artifacts are written in a
private directory under the node's scratch directory (thaw's own home, never a shared $TMPDIR).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from thaw import faults
from thaw.errors import ArtifactNotFound, BusyError, ConfigError, IntegrityError
from thaw.store.base import Fetched, Staged, Store, staging_name
from thaw.store.confined import Tree, new_private_dir, private_dir, write_manifest
from thaw.store.digest import chunk_digest, describe_tree
from thaw.store.s3_calls import S3Calls, make_client, Refused
from thaw.model.manifest import (CHUNK_SIZE, MANIFEST, MAX_CHUNK_SIZE, MAX_MANIFEST_BYTES, MIN_CHUNK_SIZE,
                                 FileEntry, Manifest, check_name)
from thaw.store.signing import Signer, Trust

#: S3 refuses multipart parts below 5 MiB (except the last one)
MIN_PART_SIZE = 5 << 20
#: S3 allows at most this many parts per upload
MAX_PARTS = 10_000
DEFAULT_WORKERS = 16
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
#: S3 error codes (or HTTP statuses) meaning "no such object"
_MISSING = ("NoSuchKey", "404", "NotFound")
#: ... and "a conditional put lost": 412 when the object exists, 409 when another conditional write raced
_CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


@dataclass(frozen=True)
class _Piece:
    """One unit of parallel transfer: ``length`` bytes of ``entry`` from ``offset`` (whole chunks)."""

    entry: FileEntry
    index: int  # part number - 1 (upload) or chunk index (download)
    offset: int
    length: int
    first_chunk: int


class S3Store(S3Calls, Store):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        workers: int = DEFAULT_WORKERS,
        chunk_size: int = CHUNK_SIZE,
        scratch: Path | str | None = None,
        client: Any = None,
        signer: Signer | None = None,
        trust: Trust | None = None,
    ) -> None:
        if not bucket:
            raise ConfigError("store", "an s3:// URL needs a bucket", hint="s3://bucket/prefix?endpoint=...")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = endpoint
        self.workers = max(1, workers)
        self.chunk_size = chunk_size
        #: node-local directory where artifacts are written before upload (under thaw's home: Settings.scratch_dir)
        self.scratch = Path(scratch) if scratch else None
        self.signer = signer
        self.trust = trust or Trust()
        query = f"?endpoint={endpoint}" if endpoint else ""
        self.url = f"s3://{bucket}/{self.prefix}{query}"
        self._client = client or make_client(endpoint, region, self.workers)

    @classmethod
    def from_url(cls, url: str, *, scratch: Path | str | None = None, client: Any = None,
                 signer: Signer | None = None, trust: Trust | None = None) -> S3Store:
        """``s3://bucket/prefix?endpoint=URL&region=R&workers=N&chunk_mib=M``."""
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ConfigError("store", f"{url!r} is not an s3:// URL")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region", "workers", "chunk_mib"}
        if unknown:
            raise ConfigError("store", f"unknown option(s) {sorted(unknown)} in {url!r}",
                              hint="known: endpoint, region, workers, chunk_mib")
        try:
            workers = int(query.get("workers", DEFAULT_WORKERS))
            chunk_size = int(float(query["chunk_mib"]) * (1 << 20)) if "chunk_mib" in query else CHUNK_SIZE
        except ValueError as exc:
            raise ConfigError("store", f"bad number in {url!r}: {exc}") from exc
        if not max(MIN_CHUNK_SIZE, 1 << 20) <= chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError("store", f"chunk_mib must be between 1 and {MAX_CHUNK_SIZE >> 20}")
        return cls(parts.netloc, parts.path, endpoint=query.get("endpoint"), region=query.get("region"),
                   workers=workers, chunk_size=chunk_size, scratch=scratch, client=client, signer=signer, trust=trust)

    # ---- keys -------------------------------------------------------------------------

    def _manifest_key(self, name: str) -> str:
        return f"{self.prefix}{name}/{MANIFEST}"

    def _data_prefix(self, name: str, artifact_id: str) -> str:
        return f"{self.prefix}{name}/{artifact_id}/"

    # ---- publish ----------------------------------------------------------------------

    def _staging_dir(self, name: str, artifact_id: str) -> Path:
        if self.scratch is None:
            raise ConfigError("store", f"{self.url} has no scratch directory to write new artifacts in",
                              hint="open it with thaw.store.store_for(settings) or open_store(url, scratch=...)")
        private_dir(self.scratch)
        d = self.scratch / staging_name(name, artifact_id)
        d.mkdir(mode=0o700)
        return d

    def _staging_entries(self) -> list[Path]:
        return sorted(self.scratch.iterdir()) if self.scratch is not None and self.scratch.is_dir() else []

    def _publish(self, staged: Staged) -> Manifest:
        """Upload every file under the artifact id, then the manifest, conditionally."""
        assert staged.published is not None
        if self.exists(staged.name):  # cheap early refusal; the conditional put below decides races
            raise BusyError(f"an artifact named {staged.name!r} already exists in {self.url}",
                            hint="pick another name, or `thaw rm` the old one first")
        t0 = time.perf_counter()
        files = describe_tree(staged.dir, chunk_size=self.chunk_size, workers=self.workers, make_private=True)
        manifest = self._seal(staged, files, chunk_size=self.chunk_size)
        t1 = time.perf_counter()
        data_prefix = self._data_prefix(staged.name, staged.artifact_id)
        try:
            self._upload_files(staged.dir, manifest, data_prefix)
            faults.point("store.rename")  # every file uploaded, the manifest not yet
            t2 = time.perf_counter()
            self._put_manifest(manifest)
        except BaseException:
            self._delete_prefix(data_prefix)
            raise
        t3 = time.perf_counter()
        staged.stats.update({
            "digest_s": t1 - t0,
            "upload_s": t2 - t1,
            "manifest_s": t3 - t2,
            "bytes": float(manifest.size),
            "write_gbps": manifest.size / (t2 - t1) / 1e9 if t2 > t1 else 0.0,
        })
        return manifest

    def _upload_files(self, root: Path, manifest: Manifest, data_prefix: str) -> None:
        chunks_per_part = max(1, -(-MIN_PART_SIZE // manifest.chunk_size))
        pieces: list[_Piece] = []
        multipart: dict[str, str] = {}  # file path -> upload id
        for entry in manifest.files:
            n_chunks = max(1, len(entry.chunks))
            n_parts = -(-n_chunks // chunks_per_part)
            if n_parts > MAX_PARTS:
                raise ConfigError("store", f"{entry.path} needs {n_parts} parts (S3 allows {MAX_PARTS})",
                                  hint="use a larger chunk_mib in the store URL")
            part_len = chunks_per_part * manifest.chunk_size
            for i in range(n_parts):
                off = i * part_len
                pieces.append(_Piece(entry, i, off, min(part_len, entry.size - off), i * chunks_per_part))
            if n_parts > 1:
                key = data_prefix + entry.path
                multipart[entry.path] = self._call(
                    "create_multipart_upload", Bucket=self.bucket, Key=key)["UploadId"]
        faults.point("store.upload")  # multipart uploads begun, no part sent
        etags: dict[str, list[tuple[int, str]]] = {path: [] for path in multipart}
        lock = threading.Lock()
        tree = Tree.open(root)

        def send(piece: _Piece) -> None:
            data = _read_range(tree, piece.entry.path, piece.offset, piece.length)
            _check_chunks(manifest, piece, data, what="changed while it was uploaded")
            md5 = hashlib.md5(data)
            key = data_prefix + piece.entry.path
            common: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": data,
                      "ContentMD5": base64.b64encode(md5.digest()).decode()}
            if piece.entry.path in multipart:
                out = self._call("upload_part", UploadId=multipart[piece.entry.path],
                                 PartNumber=piece.index + 1, **common)
            else:
                out = self._call("put_object", **common)
            etag = out.get("ETag", "").strip('"')
            if _MD5_ETAG.match(etag) and etag != md5.hexdigest():
                raise IntegrityError(f"{self.url}: the server stored {key} part {piece.index + 1} with MD5 "
                                     f"{etag}, we sent {md5.hexdigest()}", path=key)
            if piece.entry.path in multipart:
                with lock:
                    etags[piece.entry.path].append((piece.index + 1, out["ETag"]))

        try:
            _run_parallel(send, pieces, self.workers)
            for path, upload_id in multipart.items():
                parts = [{"PartNumber": n, "ETag": e} for n, e in sorted(etags[path])]
                self._call("complete_multipart_upload", Bucket=self.bucket, Key=data_prefix + path,
                           UploadId=upload_id, MultipartUpload={"Parts": parts})
                multipart[path] = ""
        finally:
            tree.close()
            for path, upload_id in multipart.items():
                if upload_id:
                    self._call_quietly("abort_multipart_upload", Bucket=self.bucket,
                                       Key=data_prefix + path, UploadId=upload_id)

    def _put_manifest(self, manifest: Manifest) -> None:
        body = manifest.to_json().encode()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        try:
            self._call("put_object", Bucket=self.bucket, Key=self._manifest_key(manifest.name), Body=body,
                       ContentMD5=md5, ContentType="application/json", IfNoneMatch="*", expect=_CONFLICT)
        except Refused as exc:
            raise BusyError(f"another publisher created {manifest.name!r} in {self.url} first",
                            hint="pick another name, or `thaw rm` the old one first") from exc

    # ---- read -------------------------------------------------------------------------

    def list(self) -> list[Manifest]:
        names: list[str] = []
        for page in self._pages("list_objects_v2", Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                name = cp["Prefix"][len(self.prefix):].rstrip("/")
                try:
                    names.append(check_name(name))
                except ConfigError:
                    continue  # not ours
        out: list[Manifest] = []
        lock = threading.Lock()

        def load(name: str) -> None:
            try:
                m = self.manifest(name)
            except (ArtifactNotFound, IntegrityError):
                return  # being published (no manifest yet), being deleted, or unreadable: not offered
            with lock:
                out.append(m)

        _run_parallel(load, names, self.workers)
        return sorted(out, key=lambda m: m.created_at, reverse=True)

    def manifest(self, name: str) -> Manifest:
        check_name(name)
        key = self._manifest_key(name)
        try:
            out = self._call("get_object", Bucket=self.bucket, Key=key, expect=_MISSING)
        except Refused as exc:
            raise ArtifactNotFound(f"no artifact named {name!r} in {self.url}",
                                   hint="`thaw ls` lists the artifacts") from exc
        where = f"s3://{self.bucket}/{key}"
        if out.get("ContentLength", 0) > MAX_MANIFEST_BYTES:  # refused unread: it may be anything
            raise IntegrityError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes: not a thaw manifest", path=where)
        return Manifest.parse(out["Body"].read(MAX_MANIFEST_BYTES + 1), where=where, name=name)

    def check_complete(self, name: str) -> Manifest:
        manifest = self.manifest(name)
        prefix = self._data_prefix(name, manifest.artifact_id)
        sizes = {o["Key"][len(prefix):]: o["Size"]
                 for page in self._pages("list_objects_v2", Bucket=self.bucket, Prefix=prefix)
                 for o in page.get("Contents", [])}
        for entry in manifest.files:
            if sizes.get(entry.path) != entry.size:
                found = "is missing" if entry.path not in sizes else f"has {sizes[entry.path]} bytes"
                raise IntegrityError(f"artifact {name!r} is incomplete: {entry.path} {found} (the manifest says "
                                     f"{entry.size} bytes)", path=prefix + entry.path,
                                     hint=f"it was half-deleted or damaged; `thaw rm {name}` removes it")
        return manifest

    def _fetch(self, manifest: Manifest, staging_root: Path) -> Fetched:
        """Download the artifact into a new private directory with parallel ranged reads, every chunk checked."""
        target = new_private_dir(staging_root, prefix=f"{manifest.name}.{manifest.artifact_id[:12]}.")
        try:
            t0 = time.perf_counter()
            with Tree.open(target) as tree:
                for entry in manifest.files:
                    tree.create_file(entry.path, entry.size)
                faults.point("store.fetch")
                self._download(manifest, lambda piece, data: tree.write_at(piece.entry.path, piece.offset, data))
            write_manifest(manifest, target)
            dt = time.perf_counter() - t0
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return Fetched(manifest, target, in_place=False, stats={
            "fetch_s": dt, "bytes": float(manifest.size), "read_gbps": manifest.size / dt / 1e9 if dt > 0 else 0.0,
            "workers": float(self.workers),
        })

    def _verify(self, manifest: Manifest) -> None:
        self._download(manifest, lambda piece, data: None)

    def _download(self, manifest: Manifest, sink: Callable[[_Piece, bytes], None]) -> None:
        prefix = self._data_prefix(manifest.name, manifest.artifact_id)
        pieces: list[_Piece] = []
        for entry in manifest.files:  # the chunk lists cover every byte: Manifest validates that
            for i in range(len(entry.chunks)):
                off = i * manifest.chunk_size
                pieces.append(_Piece(entry, i, off, min(manifest.chunk_size, entry.size - off), i))

        def get(piece: _Piece) -> None:
            key = prefix + piece.entry.path
            last = piece.offset + piece.length - 1
            try:
                out = self._call("get_object", Bucket=self.bucket, Key=key, Range=f"bytes={piece.offset}-{last}",
                                 expect=_MISSING + ("InvalidRange", "416"))
            except Refused as exc:
                if exc.code in _MISSING:
                    raise IntegrityError(f"artifact {manifest.name!r}: file {piece.entry.path} is missing "
                                         f"(s3://{self.bucket}/{key})", path=piece.entry.path) from exc
                raise IntegrityError(f"artifact {manifest.name!r}: {piece.entry.path} is shorter than "
                                     f"{piece.entry.size} bytes", path=piece.entry.path) from exc
            data = out["Body"].read()
            if len(data) != piece.length:
                raise IntegrityError(f"artifact {manifest.name!r}: {piece.entry.path} chunk {piece.index} has "
                                     f"{len(data)} bytes, expected {piece.length}", path=piece.entry.path)
            _check_chunks(manifest, piece, data, what="does not match its digest")
            sink(piece, data)

        _run_parallel(get, sorted(pieces, key=lambda p: -p.length), self.workers)

    # ---- delete and sweep ---------------------------------------------------------------

    def delete(self, name: str) -> str:
        try:
            artifact_id: str | None = self.manifest(name).artifact_id
        except IntegrityError:
            artifact_id = None  # unreadable: its data (under an id we cannot trust) is left to sweep()
        # the manifest first: the artifact disappears for every reader at once
        self._call("delete_object", Bucket=self.bucket, Key=self._manifest_key(name))
        if artifact_id:
            self._delete_prefix(self._data_prefix(name, artifact_id))
        return "artifact"

    def abandon(self, name: str, artifact_id: str, staged_dir: Path) -> None:
        """Remove a crashed publish's uploads (files and open multipart uploads) unless its manifest landed."""
        shutil.rmtree(staged_dir, ignore_errors=True)
        try:
            if self.manifest(name).artifact_id == artifact_id:
                return  # it was published: an artifact, not debris
        except (ArtifactNotFound, IntegrityError):
            pass
        prefix = self._data_prefix(name, artifact_id)
        for page in self._pages("list_multipart_uploads", Bucket=self.bucket, Prefix=prefix):
            for up in page.get("Uploads", []):
                self._call_quietly("abort_multipart_upload", Bucket=self.bucket, Key=up["Key"],
                                   UploadId=up["UploadId"])
        self._delete_prefix(prefix)

    def sweep(self, older_than_s: float | None = None) -> int:
        """Remove debris of crashed publishers: this node's scratch entries whose owner died, with their uploads
        (Store.sweep, abandon); with ``older_than_s``, also every multipart upload and unreferenced file older than
        that, whoever started it (so that uploads in progress on other nodes survive).
        """
        n = super().sweep(older_than_s)
        if older_than_s is None:
            return n
        now = datetime.now(UTC)
        for page in self._pages("list_multipart_uploads", Bucket=self.bucket, Prefix=self.prefix):
            for up in page.get("Uploads", []):
                if (now - up["Initiated"]).total_seconds() >= older_than_s:
                    self._call_quietly("abort_multipart_upload", Bucket=self.bucket, Key=up["Key"],
                                       UploadId=up["UploadId"])
                    n += 1
        current: dict[str, str | None] = {}
        stale: list[str] = []
        for page in self._pages("list_objects_v2", Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.prefix):].split("/")
                if len(rel) < 3:
                    continue  # a manifest, or not ours
                name, artifact_id = rel[0], rel[1]
                if name not in current:
                    try:
                        current[name] = self.manifest(name).artifact_id
                    except (ArtifactNotFound, IntegrityError, ConfigError):
                        current[name] = None
                if artifact_id != current[name] and (now - obj["LastModified"]).total_seconds() >= older_than_s:
                    stale.append(obj["Key"])
        self._delete_keys(stale)
        return n + len(stale)

    def _delete_prefix(self, prefix: str) -> None:
        keys = [o["Key"] for page in self._pages("list_objects_v2", Bucket=self.bucket, Prefix=prefix)
                for o in page.get("Contents", [])]
        self._delete_keys(keys)

    def _delete_keys(self, keys: builtins.list[str]) -> None:  # `list` is a method of this class
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            self._call("delete_objects", Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


def _check_chunks(manifest: Manifest, piece: _Piece, data: bytes, *, what: str) -> None:
    view = memoryview(data)
    for k in range(max(1, -(-len(data) // manifest.chunk_size))):
        i = piece.first_chunk + k
        if i >= len(piece.entry.chunks):
            break  # an empty file has no chunk digests
        got = chunk_digest(view[k * manifest.chunk_size:(k + 1) * manifest.chunk_size])
        if got != piece.entry.chunks[i]:
            raise IntegrityError(f"artifact {manifest.name!r}: {piece.entry.path} chunk {i} {what} "
                                 f"(expected {piece.entry.chunks[i]}, got {got})", path=piece.entry.path)


def _read_range(tree: Tree, rel: str, offset: int, length: int) -> bytes:
    fd = tree.open_file(rel)
    try:
        return os.pread(fd, length, offset) if length else b""
    finally:
        os.close(fd)


def _run_parallel(fn: Callable[[Any], None], items: list[Any], workers: int) -> None:
    """Run ``fn`` over ``items`` on a thread pool; the first error cancels what has not started and is raised."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        for f in futures:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
