"""The freeze → store → thaw pipeline: launch, snapshot, restore, release and stop workers.

Each operation is a short top-level function calling one step after another, timing
each phase (phases.py), and undoing what it did when a step fails.
"""

from __future__ import annotations

from thaw.config import Settings
from thaw.errors import ThawError
from thaw.pipeline import control
from thaw.pipeline.instances import Instance, find
from thaw.pipeline.instances import all_instances as list_instances
from thaw.pipeline.recovery import Recovered, clear_staging, recover
from thaw.pipeline.restore import Restored, restore
from thaw.pipeline.run import launch
from thaw.pipeline.snapshot import Snapshot, snapshot
from thaw.worker.protocol import Action

__all__ = ["Instance", "Recovered", "Restored", "Snapshot", "clear_staging", "find", "launch", "list_instances",
           "recover", "release", "restore", "snapshot", "stop", "wait_ready"]


def wait_ready(settings: Settings, worker: str | Instance, timeout: float = 60.0):
    """Wait until a worker has parked at its quiesce point; returns its readiness marker."""
    inst = worker if isinstance(worker, Instance) else find(settings, worker)
    return control.wait_ready(inst, timeout)


def release(settings: Settings, worker: str | Instance, timeout: float = 60.0) -> Instance:
    """Tell a parked worker to go on serving without a snapshot."""
    inst = worker if isinstance(worker, Instance) else find(settings, worker)
    with inst.operation("release"):
        control.wait_ready(inst, timeout)
        control.send(inst, Action.RELEASE, timeout=timeout)
    return inst


def stop(settings: Settings, worker: str | Instance, timeout: float = 10.0) -> Instance:
    """Stop a worker: ask a parked one to return STOPPED, then make sure the sandbox is gone.

    Takes the worker's lock, as every operation on it does: a worker being snapshotted or
    restored is not stopped under that operation's feet (BusyError names it).
    """
    inst = worker if isinstance(worker, Instance) else find(settings, worker)
    with inst.operation("stop"):
        if inst.alive() and inst.ready() is not None:
            try:
                control.send(inst, Action.STOP, timeout=min(timeout, 2.0))
            except ThawError:
                pass  # not parked (serving), or not answering: the kill below ends it
        inst.kill(timeout)
        inst.state = "stopped"
        inst.save()
    return inst
