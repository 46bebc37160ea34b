"""boto3 calls for S3Store: errors mapped to thaw's, pagination, the client's configuration.

``S3Calls`` is a mixin: it needs ``_client``, ``url``, ``bucket`` and ``endpoint`` on the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from thaw.errors import ConfigError, StorageError, ThawError


class S3Calls:
    _client: Any
    url: str
    bucket: str
    endpoint: str | None

    def _call(self, op: str, *, expect: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """Call a boto3 operation and map its errors to ours; S3 error codes in ``expect`` raise ``Refused``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, op)(**kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = f"{self.url}: {op} {kwargs.get('Key', '')} failed: {code} {err.get('Message', '')}".strip()
            if code in ("NoSuchBucket",):
                error: ThawError = ConfigError("store", f"no bucket {self.bucket!r} at {self.endpoint or 'S3'}")
            elif code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                error = ConfigError("store", message, hint="check the AWS_* credentials the agent runs with")
            else:
                error = StorageError(message)
            if code in expect or str(status) in expect:
                raise Refused(code or str(status), error) from exc
            raise error from exc
        except BotoCoreError as exc:
            raise StorageError(f"{self.url}: {op} failed: {exc}",
                               hint="is the object store reachable (endpoint, network, credentials)?") from exc

    def _call_quietly(self, op: str, **kwargs: Any) -> None:
        try:
            self._call(op, **kwargs)
        except ThawError:
            pass  # best-effort clean-up; sweep() catches what is left

    def _pages(self, op: str, **kwargs: Any) -> Iterable[dict[str, Any]]:
        token_in, token_out = {
            "list_objects_v2": ("ContinuationToken", "NextContinuationToken"),
            "list_multipart_uploads": ("KeyMarker", "NextKeyMarker"),
        }[op]
        extra: dict[str, Any] = {}
        while True:
            page = self._call(op, **kwargs, **extra)
            yield page
            if not page.get("IsTruncated"):
                return
            extra = {token_in: page[token_out]}
            if op == "list_multipart_uploads":
                extra["UploadIdMarker"] = page.get("NextUploadIdMarker", "")


class Refused(ThawError):
    """An S3 error the caller said it expects (``code``); ``error`` is our mapping of it."""

    def __init__(self, code: str, error: ThawError) -> None:
        super().__init__(str(error))
        self.code = code
        self.error = error
        self.reason = error.reason


def make_client(endpoint: str | None, region: str | None, workers: int) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=workers + 4,
        retries={"mode": "standard", "max_attempts": 5},
        # custom endpoints (MinIO, Ceph, test servers) rarely have per-bucket DNS names
        s3={"addressing_style": "path" if endpoint else "auto"},
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region or
                                          os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                                          or "us-east-1", config=config)
