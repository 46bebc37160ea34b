"""Interrupting ``thaw restore`` while the restored copy runs its thaw hook.

Ctrl-C and SIGTERM unwind: the command kills what it restored and says so, also when
the signal comes while CRIU is still restoring (CRIU finishes the tree although nobody
waits for its answer). SIGKILL cannot be caught: the copy is left parked, and the next
``thaw ps`` or ``thaw gc`` kills it. Either way the artifact stays as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from workers import processes_of, wait_until

pytestmark = pytest.mark.criu


@pytest.fixture
def restoring(thaw):
    """Start ``thaw restore a1 --name copy`` of a worker whose thaw hook sleeps; return (process, copy's instance)."""
    thaw.run_worker("w", "--wait", TEST_THAW_SLEEP="60")
    thaw.ok("snapshot", "w", "-a", "a1")
    digest = thaw.json("inspect", "a1")["digest"]
    restore = thaw.start("restore", "a1", "--name", "copy")

    def copy_restored() -> dict | None:
        for path in (thaw.home / "instances").glob("copy-*/instance.json"):
            inst = json.loads(path.read_text())
            if inst["host_pid"] and inst["host_pid"] in processes_of(thaw.home):
                return inst
        assert restore.poll() is None, restore.communicate()
        return None

    copy = wait_until(copy_restored, 30, "CRIU to restore the copy")
    yield restore, copy, digest
    if restore.poll() is None:
        restore.kill()
    restore.communicate()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_restore_kills_its_copy_and_leaves_the_artifact(thaw, restoring, sig: signal.Signals) -> None:
    restore, copy, digest = restoring
    assert copy["state"] == "restoring"

    restore.send_signal(sig)
    out, err = thaw.finish(restore, timeout=20)

    assert restore.returncode == 1
    assert err.splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in err
    assert processes_of(thaw.home) == []  # gone before the command returned
    assert {i["name"]: i["state"] for i in thaw.json("ps", "--all")} == {"w": "snapshotted", "copy": "failed"}
    assert thaw.ok("verify", "a1").startswith("ok a1")
    assert thaw.json("inspect", "a1")["digest"] == digest


@pytest.mark.parametrize("command", ["gc", "ps"])
def test_a_copy_left_by_a_killed_restore_is_recovered(thaw, restoring, command: str) -> None:
    restore, copy, digest = restoring

    os.kill(restore.pid, signal.SIGKILL)
    restore.wait(10)
    assert processes_of(thaw.home) == [copy["host_pid"]]  # nobody unwound: the copy is still parked

    done = thaw(command)

    assert done.returncode == 0, done.stderr
    assert f"killed copy ({copy['id']}): its restore by pid {restore.pid} never finished" in done.stderr
    if command == "gc":
        assert done.stdout.startswith("recovered 1 interrupted restore(s);")
    assert processes_of(thaw.home) == []
    assert [i["state"] for i in thaw.json("ps", "--all") if i["name"] == "copy"] == ["failed"]
    assert thaw.ok("gc").startswith("recovered 0 interrupted restore(s);")
    assert thaw.json("inspect", "a1")["digest"] == digest
    thaw.ok("verify", "a1")


@pytest.fixture
def restoring_in_criu(thaw):
    """Start ``thaw restore a1 --name copy`` of a big worker; return (process, copy's instance dir) while CRIU works."""
    thaw.run_worker("w", "--wait", TEST_BALLAST_MB="500")  # CRIU takes a few hundred ms to restore it
    thaw.ok("snapshot", "w", "-a", "a1")
    restore = thaw.start("restore", "a1", "--name", "copy")

    def criu_restoring() -> Path | None:
        for log in (thaw.home / "instances").glob("copy-*/ops/restore/restore.log"):
            inst = json.loads((log.parents[2] / "instance.json").read_text())
            if not inst["host_pid"]:
                return log.parents[2]
        assert restore.poll() is None, restore.communicate()
        return None

    copy_dir = wait_until(criu_restoring, 30, "CRIU to start restoring the copy", interval=0.002)
    yield restore, copy_dir
    if restore.poll() is None:
        restore.kill()
    restore.communicate()
    shutil.rmtree(thaw.home / "artifacts", ignore_errors=True)  # half a GiB: pytest keeps recent tmp dirs


def test_an_interrupt_while_criu_restores_kills_the_copy(thaw, restoring_in_criu) -> None:
    restore, copy_dir = restoring_in_criu

    restore.send_signal(signal.SIGTERM)
    out, err = thaw.finish(restore, timeout=30)

    assert restore.returncode == 1 and err.splitlines()[-1] == "error: interrupted", err
    assert processes_of(thaw.home) == []
    assert json.loads((copy_dir / "instance.json").read_text())["state"] == "failed"


def test_a_copy_left_by_a_restore_killed_while_criu_restores_is_recovered(thaw, restoring_in_criu) -> None:
    restore, copy_dir = restoring_in_criu

    os.kill(restore.pid, signal.SIGKILL)
    restore.wait(10)
    thaw.ok("gc")

    assert processes_of(thaw.home) == []
    assert json.loads((copy_dir / "instance.json").read_text())["state"] == "failed"
