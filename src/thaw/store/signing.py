"""Signed artifacts: an ed25519 key signs the artifact digest at snapshot; nodes that trust its public key check it.

The signature covers ``Manifest.digest``, which covers the whole manifest (canary, name,
sandbox layout, GPUs, ...) and through the file digests every byte of every file, so one
signature vouches for the whole artifact. What a node accepts (``Trust``):

* with no trusted keys, any intact artifact (signed or not; a signature is reported, not checked);
* with trusted keys, only artifacts signed by one of them, over exactly this manifest;
* with an expected digest (``NAME@DIGEST``), only that exact artifact, signed or not.

Keys are PEM files (PKCS#8 private key, SubjectPublicKeyInfo public key), made by
``thaw keys generate``; the key id is the first 16 hex digits of the SHA-256 of the raw
public key. Crypto is the ``cryptography`` library's, never our own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from thaw.errors import ConfigError, UntrustedArtifact
from thaw.store.manifest import Manifest, Signature

#: what is signed: this prefix and the digest (domain separation: a thaw key signs nothing else by accident)
CONTEXT = b"thaw artifact digest v1\n"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """Signs manifests with one private key (``THAW_SIGNING_KEY``)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.key_id = key_id(private.public_key())

    @classmethod
    def load(cls, path: Path) -> Signer:
        path = Path(path)
        try:
            st = os.stat(path)
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError("signing_key", f"cannot read {path}: {exc.strerror}",
                              hint="`thaw keys generate DIR` writes a key pair") from exc
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ConfigError("signing_key", f"{path} can be read by other users (mode {stat.S_IMODE(st.st_mode):o})",
                              hint=f"chmod 600 {path}")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError("signing_key", f"{path} is not an unencrypted PEM private key",
                              hint="`thaw keys generate DIR` writes one") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("signing_key", f"{path} is not an ed25519 key", hint="`thaw keys generate DIR` writes one")
        return cls(key)

    def sign(self, manifest: Manifest) -> Manifest:
        value = self._private.sign(CONTEXT + manifest.digest.encode())
        return manifest.model_copy(update={"signature": Signature(key_id=self.key_id,
                                                                  value=base64.b64encode(value).decode())})


@dataclass(frozen=True)
class Trust:
    """What this node accepts from the store: any intact artifact, or only those signed by ``keys``."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)  # key id -> key

    @classmethod
    def load(cls, paths: Iterable[Path]) -> Trust:
        keys: dict[str, Ed25519PublicKey] = {}
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError("trusted_keys", f"cannot read {path}: {exc.strerror}") from exc
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, TypeError) as exc:
                raise ConfigError("trusted_keys", f"{path} is not a PEM public key",
                                  hint="use the .pub file `thaw keys generate` wrote") from exc
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError("trusted_keys", f"{path} is not an ed25519 public key")
            keys[key_id(key)] = key
        return cls(keys)

    def check(self, manifest: Manifest, *, expected_digest: str | None = None) -> None:
        """Raise UntrustedArtifact unless ``manifest`` is the expected artifact and signed as this node requires."""
        digest = manifest.digest
        if expected_digest is not None and digest != expected_digest:  # both public: no need for constant time
            raise UntrustedArtifact(
                f"artifact {manifest.name!r} has digest {digest}, not the expected {expected_digest}: "
                "it was changed or replaced since that digest was taken", path=manifest.name,
                hint="restore the artifact you meant (check `thaw inspect`), or take a new snapshot")
        if not self.keys:
            return
        signature = manifest.signature
        if signature is None:
            raise UntrustedArtifact(
                f"artifact {manifest.name!r} is not signed, and this node accepts only signed artifacts",
                path=manifest.name, hint="snapshot with THAW_SIGNING_KEY set (docs/security.md)")
        key = self.keys.get(signature.key_id)
        if key is None:
            raise UntrustedArtifact(
                f"artifact {manifest.name!r} is signed by key {signature.key_id}, which this node does not trust",
                path=manifest.name, hint="add that key's .pub file to THAW_TRUSTED_KEYS, or take a new snapshot")
        try:
            key.verify(base64.b64decode(signature.value, validate=True), CONTEXT + digest.encode())
        except (InvalidSignature, ValueError):
            raise UntrustedArtifact(
                f"artifact {manifest.name!r}: its signature by key {signature.key_id} does not match: the manifest "
                "was changed after it was signed", path=manifest.name,
                hint="take a new snapshot; find out who can write the store (docs/security.md)") from None

    def describe(self, manifest: Manifest) -> str:
        """One line for people: is it signed, by whom, and did this node check it."""
        signature = manifest.signature
        if signature is None:
            return "unsigned" + (" (this node accepts only signed artifacts)" if self.keys else "")
        if not self.keys:
            return f"signed by key {signature.key_id} (not checked: this node trusts no keys)"
        try:
            self.check(manifest)
        except UntrustedArtifact as exc:
            return f"signed by key {signature.key_id}: REFUSED ({exc.message})"
        return f"signed by trusted key {signature.key_id}"


def generate(directory: Path, name: str = "thaw-signing") -> tuple[Path, Path, str]:
    """Write a new key pair ``DIR/NAME.key`` (0600) and ``DIR/NAME.pub``; refuse to overwrite either."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise ConfigError("keys", f"{path} already exists", hint="choose another directory or --name")
    _write_new(private_path, pem, 0o600)
    _write_new(public_path, pub, 0o644)
    return private_path, public_path, key_id(private.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
