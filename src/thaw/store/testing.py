"""Helpers for tests of thaw stores, thaw's own and users': a real S3-compatible server process.

``s3_server()`` starts moto's standalone S3 server (``moto_server``, from the
``moto[server]`` package) on a free loopback port, creates a bucket, and yields an
``s3://`` URL for it. It is a real HTTP server in its own process, so tests exercise
boto3, the wire protocol, multipart uploads, ranged reads and conditional puts exactly
as against a production server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: credentials the test server accepts (it accepts any); set in os.environ by s3_server()
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "thaw-test", "AWS_SECRET_ACCESS_KEY": "thaw-test-secret",
                    "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_server_binary() -> str | None:
    """The ``moto_server`` next to this interpreter, or on PATH."""
    here = Path(sys.executable).parent / "moto_server"
    return str(here) if here.exists() else shutil.which("moto_server")


@contextmanager
def s3_server(bucket: str = "thaw-test", *, log: Path | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run an S3-compatible server; yield ``s3://bucket?endpoint=http://127.0.0.1:PORT``."""
    binary = moto_server_binary()
    if binary is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]'")
    os.environ.update({k: os.environ.get(k, v) for k, v in TEST_CREDENTIALS.items()})
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}")
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1).close()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {endpoint} within {timeout}s") from None
                time.sleep(0.05)
        import boto3

        boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=bucket)
        yield f"s3://{bucket}?endpoint={endpoint}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]
