"""The audit log: one JSON line per operation request and per outcome, append-only and hash-chained.

Each line: ``time`` (UTC ISO 8601), ``caller`` (uid/gid/pid from SO_PEERCRED on the unix
socket, or the token's identity and address over TCP), ``operation``, ``worker``,
``artifact``, ``artifact_id``, ``digest``, ``outcome`` (accepted | succeeded | failed |
rejected), plus ``job`` and ``reason``/``message`` where there are any, and ``prev``: the
SHA-256 of the line before it (its exact bytes, without the newline; 64 zeros for the
first line the agent ever wrote). Changing, inserting or removing a line breaks the chain
at the next one: ``thaw audit verify`` names the first line that does not follow.

The chain continues across restarts (the agent reads the last line's hash at start) and
across rotation (rename the file; the agent's next line starts a fresh file whose first
``prev`` is the old file's last line: verify the files in order). What a chain cannot show
is a cut-off tail: ship the log off the node, or note its last hash (``thaw audit verify``
prints it), where that matters (docs/security.md).

The file is opened with O_APPEND and each line is written with a single ``write(2)``
under a lock, so lines never interleave; it is flushed to disk before the operation it
records is answered. It is created 0600 in the agent's 0700 state directory: workers and
other users can neither read nor write it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
#: the longest line thaw writes is far shorter; a longer one is not a record of this log
MAX_LINE = 1 << 20


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._head = _last_hash(path)

    @property
    def head(self) -> str:
        """The hash of the last line written: what the next line's ``prev`` will be."""
        return self._head

    def record(self, operation: str, outcome: str, *, caller: dict[str, Any] | None = None, worker: str | None = None,
               artifact: str | None = None, artifact_id: str | None = None, digest: str | None = None,
               job: str | None = None, reason: str | None = None, message: str | None = None) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(),
            "caller": caller or {},
            "operation": operation,
            "worker": worker,
            "artifact": artifact,
            "artifact_id": artifact_id,
            "digest": digest,
            "outcome": outcome,
        }
        if job:
            entry["job"] = job
        if reason:
            entry["reason"] = reason
        if message:
            entry["message"] = message[:2000]
        with self._lock:
            entry["prev"] = self._head
            line = json.dumps(entry, default=str).encode()
            # opened per line: a rotated (renamed) log is followed by a fresh file at once
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._head = line_hash(line)

    def read(self) -> list[dict[str, Any]]:
        """Every entry so far (for tests and `thaw agent audit`)."""
        try:
            return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []


@dataclass(frozen=True)
class ChainReport:
    records: int
    anchor: str  # the first line's ``prev``: GENESIS, or the last hash of the file rotated before it
    head: str  # the last line's hash
    bad: str | None = None  # "<file>:<line>: why", the first line that breaks the chain


def verify(paths: list[Path]) -> ChainReport:
    """Check the chain of the audit files ``paths`` (in the order they were written; rotated ones first)."""
    expected: str | None = None
    anchor = head = GENESIS
    n = 0
    for path in paths:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                where = f"{path}:{number}"
                if len(line) > MAX_LINE or not line.endswith(b"\n"):
                    return ChainReport(n, anchor, head, f"{where}: not a complete record (no newline, or too long)")
                try:
                    prev = json.loads(line).get("prev")
                except (ValueError, AttributeError):
                    return ChainReport(n, anchor, head, f"{where}: not a JSON record")
                if expected is None:
                    anchor = expected = prev if isinstance(prev, str) else GENESIS
                if prev != expected:
                    return ChainReport(n, anchor, head, f"{where}: its 'prev' is not the hash of the record before it: "
                                       "this record or the one before was changed, or records were removed or "
                                       "inserted between them")
                expected = head = line_hash(line)
                n += 1
    return ChainReport(n, anchor, head)


def _last_hash(path: Path) -> str:
    """The hash of the last complete line of ``path`` (GENESIS when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - MAX_LINE))
            tail = f.read()
    except FileNotFoundError:
        return GENESIS
    lines = [line for line in tail.split(b"\n") if line]
    return line_hash(lines[-1]) if lines else GENESIS
