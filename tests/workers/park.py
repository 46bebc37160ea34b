"""A worker that only parks: it records which hooks ran and how ``quiesce()`` returned, for the SDK's tests.

Events are appended as JSON lines to ``$PARK_EVENTS``::

    {"hook": "freeze:a", "reason": "snapshot", "info": {...}}     a hook ran
    {"outcome": "thawed", "info": {...}, "managed": true, "control_dir": "..."}   quiesce returned

Switches: ``PARK_FAIL=freeze:b`` makes that hook raise; ``PARK_UNLINK=thaw:b`` makes that hook remove this
sandbox's ns link (as thaw does when it gives up on a worker); ``PARK_TIMEOUT=S`` bounds the wait.
Freeze hooks a, b, c and thaw hooks a, b, c are registered in that order.
"""

from __future__ import annotations

import json
import os
import sys

from pathlib import Path

import thaw.worker
from thaw.worker import protocol

EVENTS = os.environ["PARK_EVENTS"]


def record(event: dict) -> None:
    with open(EVENTS, "a") as f:
        f.write(json.dumps(event) + "\n")


def make_hook(kind: str, name: str):
    def hook(ctx: thaw.worker.HookContext) -> dict:
        record({"hook": f"{kind}:{name}", "reason": ctx.reason, "info": ctx.info})
        if os.environ.get("PARK_FAIL") == f"{kind}:{name}":
            raise RuntimeError(f"{kind} hook {name} failed on purpose")
        if os.environ.get("PARK_UNLINK") == f"{kind}:{name}":
            protocol.ns_link(Path(os.environ[protocol.ENV_RUN_DIR]), protocol.sandbox_key()).unlink()
        return {"by": f"{kind}:{name}"}

    return hook


for hook_name in ("a", "b", "c"):
    thaw.worker.on_freeze(make_hook("freeze", hook_name), name=hook_name)
    thaw.worker.on_thaw(make_hook("thaw", hook_name), name=hook_name)

timeout = float(os.environ["PARK_TIMEOUT"]) if os.environ.get("PARK_TIMEOUT") else None
outcome = thaw.worker.quiesce(name="parker", canary=lambda: {"answer": 42, "pid": os.getpid()}, timeout=timeout)
control = thaw.worker.control_dir()
record({"outcome": outcome.kind.value, "info": outcome.info, "managed": outcome.managed,
        "control_dir": str(control) if control else None})
sys.exit(0)
