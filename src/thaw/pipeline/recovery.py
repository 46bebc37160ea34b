"""Settling what a snapshot or a restore left behind when the process running it died without unwinding.

A snapshot or restore that fails, or is interrupted (SIGINT, SIGTERM), undoes its own
work. Only a process that dies without unwinding (SIGKILL, OOM, a node agent killed
mid-job) leaves work half done; its instance records say how far it got
(instances.py), and :func:`recover` — run by ``thaw ps``/``thaw gc`` and by the agent
when it starts — settles it:

* a **restore** whose restorer died: its copy (parked, unverified) is killed, once the
  CRIU restore that outlives its restorer has finished;
* a **snapshot** whose snapshotter died: once CRIU has let go of the worker, an artifact
  staged but not confirmed is removed (also if its publish landed unconfirmed), and the
  worker is brought back: the GPU state rolled back if it was checkpointed, then ABORT
  (it stays parked) — or what was asked of it once the artifact was published (stopped,
  or released with ``--leave-running``).

:func:`roll_back` is the same undo a live snapshot does when a step fails (snapshot.py).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from thaw import proc
from thaw.config import Settings
from thaw.errors import BusyError, ThawError
from thaw.model import Phase
from thaw.model.timing import PUBLISHED
from thaw.pipeline import control, gpu
from thaw.pipeline.instances import Instance, all_instances
from thaw.store import Store, open_store, owner
from thaw.worker.protocol import Action

#: how long recovery waits for a CRIU dump or restore that outlived the process that started it
CRIU_GRACE_S = 60.0
#: how long a recovered worker gets to answer ABORT / RELEASE
REPLY_S = 15.0


@dataclass
class Recovered:
    """One operation recovery settled: which, on which instance, and what it did (for logs and job records)."""

    operation: Literal["snapshot", "restore"]
    instance: Instance
    artifact: str | None
    owner_pid: int  # the process that died
    phase: str = ""  # how far the operation had got
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The id of the worker it was on."""
        return self.instance.id


def recover(settings: Settings, store: Store | None = None) -> list[Recovered]:
    """Settle every snapshot and restore on this node whose process died without unwinding."""
    everyone = all_instances(settings)
    settled = []
    for inst in everyone:
        try:
            if inst.state == "restoring" and not proc.running(inst.owner_pid):
                settled.append(_restore(inst, everyone))
            elif inst.snapshotting is not None and not proc.running(inst.snapshotting.owner_pid):
                with inst.operation("recovery"):  # a live snapshot holds it: not ours to settle
                    settled.append(_snapshot(inst, store or open_store(settings.store_url)))
        except BusyError:
            continue
        except (ThawError, OSError) as exc:  # recovery goes on with the others, and says what it could not do
            restoring = inst.state == "restoring"
            owner = inst.owner_pid if restoring or inst.snapshotting is None else inst.snapshotting.owner_pid
            settled.append(Recovered("restore" if restoring else "snapshot", inst, inst.artifact, owner,
                                     notes=[f"recovery step failed: {type(exc).__name__}: {exc}"]))
    return settled


def roll_back(inst: Instance, *, gpu_pids: list[int], timeout: float, notes: list[str] | None = None) -> None:
    """Bring a worker frozen for a snapshot back to parked: its GPU processes back to running, then ABORT.

    Errors are noted, not raised: the caller reports the failure that made it roll back.
    """
    notes = notes if notes is not None else []
    if not inst.alive():
        notes.append("the worker is gone")
        return
    if gpu_pids:
        _roll_back_gpu(gpu_pids, notes)  # if it fails, the ABORT below fails too: the worker must be stopped
    _tell(inst, Action.ABORT, timeout, notes, "the worker was told to ABORT and is parked again")


def clear_staging(settings: Settings) -> None:
    """Empty node-local staging at an agent's start of what no live process owns.

    Nothing in it outlives the process that staged it, but a ``thaw restore --local`` may be
    fetching into it right now: its entry (named after its owner, store/owner.py) stays, and
    so does one CRIU still reads; everything else goes, foreign or unnamed entries too.
    """
    staging = settings.staging_dir
    if not staging.is_dir():
        return
    for entry in staging.iterdir():
        if entry.name.startswith(".") or owner.state(entry) in ("alive", "held"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


# --- restore -------------------------------------------------------------------------------------


def _restore(inst: Instance, everyone: list[Instance]) -> Recovered:
    done = Recovered("restore", inst, inst.artifact, inst.owner_pid, phase="restoring")
    if not inst.host_pid:
        # the restorer died while CRIU worked: let CRIU finish first (it keeps its log open until it exits)
        deadline = time.monotonic() + CRIU_GRACE_S
        while proc.holders(inst.dir / "ops") and time.monotonic() < deadline:
            time.sleep(0.05)
        # With its restorer gone, the namespace outlives only in the copy; had CRIU made no copy, the
        # kernel may have given its inode to a newer sandbox, which then records it too: not ours.
        # An older record of that inode is the past (inodes are reused once freed): it says nothing.
        if any(other.netns == inst.netns and other.id != inst.id
               and (other.created_at > inst.created_at or other.alive()) for other in everyone):
            inst.netns = 0
    was_alive = inst.alive()
    inst.kill()
    inst.state = "failed"
    inst.save()
    if was_alive or inst.netns:
        done.notes.append(f"the half-restored worker {inst.id} was killed")
    return done


# --- snapshot ------------------------------------------------------------------------------------


def _snapshot(inst: Instance, store: Store) -> Recovered:
    attempt = inst.snapshotting
    assert attempt is not None  # recover() picked it for that
    done = Recovered("snapshot", inst, attempt.artifact, attempt.owner_pid, phase=attempt.phase)
    notes = done.notes
    # a CRIU dump outlives the process that started it: let it finish before anything is removed
    if inst.host_pid and not _untraced(inst.host_pid, CRIU_GRACE_S):
        notes.append(f"CRIU still held the worker after {CRIU_GRACE_S:.0f}s")
    published = attempt.phase in {p.value for p in PUBLISHED}
    if attempt.artifact_id and not published:
        # the publish may have landed in the instant before the crash, unconfirmed: take it back
        try:
            if store.manifest(attempt.artifact).artifact_id == attempt.artifact_id:
                store.delete(attempt.artifact)
                notes.append(f"unconfirmed artifact {attempt.artifact!r} removed")
        except ThawError:
            pass  # not published: nothing to take back
        store.abandon(attempt.artifact, attempt.artifact_id, Path(attempt.staged_dir))
        notes.append("staged files removed")
    elif published:
        notes.append(f"artifact {attempt.artifact!r} was published and is kept")
    if not inst.alive():
        notes.append("the worker is gone")
    elif attempt.phase == Phase.STOP_ORIGINAL.value:
        inst.kill()
        inst.state = "snapshotted"
        notes.append("the original worker was stopped, as requested")
    elif attempt.released:
        notes.append("the original was released to answer the HTTP canary and serves on")
    elif attempt.phase == Phase.RESUME_ORIGINAL.value:
        if attempt.gpu_pids:
            _roll_back_gpu(attempt.gpu_pids, notes)
        _tell(inst, Action.RELEASE, REPLY_S, notes, "released the original worker, as requested")
    else:
        roll_back(inst, gpu_pids=attempt.gpu_pids, timeout=REPLY_S, notes=notes)
    inst.snapshotting = None
    inst.save()
    return done


def _roll_back_gpu(pids: list[int], notes: list[str]) -> None:
    try:
        gpu.rollback_tree(pids)
        notes.append("GPU state rolled back")
    except ThawError as exc:
        notes.append(f"GPU rollback: {exc}")


def _tell(inst: Instance, action: Action, timeout: float, notes: list[str], done: str) -> None:
    try:
        control.send(inst, action, timeout=timeout)
        notes.append(done)
    except ThawError as exc:
        notes.append(f"{action.value} not acknowledged: {exc.message}")


def _untraced(pid: int, timeout: float) -> bool:
    """Wait until no tracer (CRIU) holds ``pid``; True if it is free (or gone)."""
    deadline = time.monotonic() + timeout
    while proc.tracer(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
