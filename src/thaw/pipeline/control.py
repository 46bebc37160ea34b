"""Sending a parked worker a command through its control directory and waiting for the reply."""

from __future__ import annotations

import time
import uuid
from typing import Any

from thaw.errors import ListenedEarly, QuiesceTimeout, WorkerError
from thaw.pipeline.instances import Instance
from thaw.worker import protocol
from thaw.worker.protocol import Action, Reply

POLL_S = 0.002


def wait_ready(inst: Instance, timeout: float) -> protocol.ReadyMarker:
    """Wait until the worker has announced its quiesce point."""
    deadline = time.monotonic() + timeout
    while True:
        marker = inst.ready()
        if marker is not None and marker.pidns == inst.pidns:
            return marker
        _refuse_early_listen(inst)
        if not inst.alive():
            raise WorkerError(f"worker {inst.name!r} exited before reaching its quiesce point",
                              hint=f"its log ends with:\n{inst.log_tail()}")
        if time.monotonic() >= deadline:
            raise QuiesceTimeout(
                f"worker {inst.name!r} did not reach its quiesce point within {timeout:.0f}s",
                hint="does it call thaw.worker.quiesce() after warm-up? raise --ready-timeout if warm-up is slow",
            )
        time.sleep(0.01)


def _refuse_early_listen(inst: Instance) -> None:
    """A server run with --park-at-listen that listened before its warm-up never parks: say so, do not wait."""
    raw = protocol.read_json(inst.dir / protocol.PARK_REPORT)
    if not raw:
        return
    report = protocol.decode_park_report(raw)
    raise ListenedEarly(
        f"worker {inst.name!r} opened its listening socket ({report.serves}) {report.reason}: thaw did not park it "
        "and will not snapshot it cold; it serves unparked",
        hint="make the server load and warm up its model before it listens (e.g. in a FastAPI lifespan handler, or "
             "before uvicorn.run), or relax the check with --park-min-warmup / --park-expect-gpu no",
    )


def send(inst: Instance, action: Action, *, timeout: float, info: dict[str, Any] | None = None,
         verify: bool = False) -> Reply:
    """Write a command, wait for the worker's reply; raise if it fails, dies or does not answer."""
    cmd = protocol.Command(id=uuid.uuid4().hex, action=action, info=info or {}, verify=verify)
    protocol.write_json_atomic(inst.control_dir / protocol.COMMAND, protocol.encode(cmd))
    deadline = time.monotonic() + timeout
    while True:
        raw = protocol.read_json(inst.control_dir / protocol.REPLY)
        if raw and raw.get("id") == cmd.id:
            reply = protocol.decode_reply(raw)
            if not reply.ok:
                raise WorkerError(f"worker {inst.name!r} failed to {action.value}: {reply.error.strip()}")
            return reply
        if not inst.alive():
            raise WorkerError(f"worker {inst.name!r} died while asked to {action.value}",
                              hint=f"its log ends with:\n{inst.log_tail()}")
        if time.monotonic() >= deadline:
            raise QuiesceTimeout(f"worker {inst.name!r} did not answer {action.value!r} within {timeout:.0f}s")
        time.sleep(POLL_S)
