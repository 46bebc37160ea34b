"""The audit log: one JSON line per operation request and per outcome, append-only.

Each line: ``time`` (UTC ISO 8601), ``caller`` (uid/gid/pid from SO_PEERCRED on the unix
socket, or the token's identity and address over TCP), ``operation``, ``worker``,
``artifact``, ``artifact_id``, ``digest``, ``outcome`` (accepted | succeeded | failed |
rejected), plus ``job`` and ``reason``/``message`` where there are any.

The file is opened with O_APPEND and each line is written with a single ``write(2)``,
so lines from concurrent writers never interleave; it is flushed to disk before the
operation it records is answered. The agent never rewrites or truncates it (rotate
it with copytruncate-free tools: rename, then the agent reopens on the next line).
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

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
        line = (json.dumps(entry, default=str) + "\n").encode()
        with self._lock:
            # opened per line: a rotated (renamed) log is followed by a fresh file at once
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """Every entry so far (for tests and `thaw agent audit`)."""
        try:
            return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []
