"""A checkpoint can land anywhere in a parked worker's poll; its copies must act on their own commands only.

CRIU stops the worker wherever it is. A copy restored from that image resumes with what
the original had looked up just before (its sandbox key, hence the original's control
directory), and after a ``--leave-running`` snapshot thaw has meanwhile told the original
RELEASE there. In CI (1 run in ~700; more often on a loaded machine) both copies of
tests/gms/test_gms_snapshot.py acted on that RELEASE: one answered it before thaw had
linked its own sandbox and died (FileNotFoundError on its ns link), the other answered it
into its own directory and went serving, so its THAW was never answered (timeout after
120 s). The real-CRIU version is tests/pipeline/test_snapshot_restore.py
(``..._caught_mid_poll_...``); here the checkpoint is placed exactly, in-process: the
only thing a restore changes for the SDK is what ``protocol.sandbox_key()`` returns, and
which directory that key's link points at.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import thaw.worker
from thaw.worker import hooks, protocol
from thaw.worker.protocol import Action
from thaw.worker.quiesce import _Parked


class Checkpoint:
    """``sandbox_key()`` across a checkpoint and restore: the original's key until the restore, the copy's after.

    ``restore_after_next_lookup()`` places the checkpoint right after the next look-up: that
    look-up still answers the original's key (it ran before the dump), every later one the copy's.
    """

    def __init__(self) -> None:
        self.key = "original"
        self.stale_lookups = 0

    def restore_after_next_lookup(self) -> None:
        self.stale_lookups, self.key = 1, "copy"

    def __call__(self, init_pid: int | None = None) -> str:
        if self.stale_lookups:
            self.stale_lookups -= 1
            return "original"
        return self.key


@pytest.fixture
def checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Checkpoint]:
    fake = Checkpoint()
    monkeypatch.setenv(protocol.ENV_RUN_DIR, str(tmp_path / "run"))
    monkeypatch.setattr(protocol, "sandbox_key", fake)
    ran: list[str] = []
    thaw.worker.on_freeze(lambda ctx: ran.append(f"freeze:{ctx.reason}"), name="record")
    thaw.worker.on_thaw(lambda ctx: ran.append(f"thaw:{ctx.reason}"), name="record")
    fake.hooks_ran = ran  # type: ignore[attr-defined]
    yield fake
    hooks.clear()


def command(control: Path, action: Action, **info: Any) -> protocol.Command:
    cmd = protocol.Command(id=uuid.uuid4().hex, action=action, info=info)
    protocol.write_json_atomic(control / protocol.COMMAND, protocol.encode(cmd))
    return cmd


def reply_id(control: Path) -> str | None:
    raw = protocol.read_json(control / protocol.REPLY)
    return raw["id"] if raw else None


def test_a_copy_restored_mid_poll_acts_on_its_own_thaw_not_on_the_originals_release(
        tmp_path: Path, checkpoint: Checkpoint) -> None:
    run_dir, original, copy = tmp_path / "run", tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    copy.mkdir()
    protocol.link_sandbox(run_dir, "original", original)
    parked = _Parked(run_dir, "w", canary=None, serves=None)
    freeze = command(original, Action.FREEZE)
    assert parked._act(parked._next_command()) is None and reply_id(original) == freeze.id
    # the dump lands right after the worker's next look-up of its sandbox key; then thaw tells the original
    # RELEASE (--leave-running), links the restored copy's sandbox and sends the copy THAW
    checkpoint.restore_after_next_lookup()
    command(original, Action.RELEASE, artifact="a1")
    protocol.link_sandbox(run_dir, "copy", copy)
    thaw_cmd = command(copy, Action.THAW, restore_id="r1")

    outcome = parked.wait(timeout=10)

    assert outcome.thawed and outcome.info == {"restore_id": "r1"}
    assert reply_id(copy) == thaw_cmd.id  # the copy answered its own restore
    assert reply_id(original) == freeze.id  # and wrote nothing where the original reads
    assert checkpoint.hooks_ran == ["freeze:snapshot", "thaw:thaw"]  # undone as a thaw, not as a release
