"""The fault matrix: ``thaw snapshot`` and ``thaw restore`` killed (SIGKILL: no unwinding) at every phase, CRIU
killed under them, a full disk, an unreachable store; each followed by what users rely on.

Faults are placed by ``THAW_FAULT=POINT:ACTION`` (thaw.faults), not by timing: each case kills
the command at exactly one point. After every case:

* snapshot: the original worker still runs, parked; no partial artifact is visible (``thaw ls``
  shows nothing, or the complete artifact when the kill came after its publish); the store's
  staging is empty once CRIU has let go; a re-run succeeds and its artifact restores;
* restore: no stray process once ``thaw ps`` has recovered; the artifact is unchanged; node
  staging is empty; a re-run succeeds and the copy answers like the original.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from workers import criu_working, processes_of, state, wait_until

THAW = Path(sys.executable).with_name("thaw")

pytestmark = [pytest.mark.criu, pytest.mark.slow]

#: where a snapshot can die, in order; the last one comes after the artifact was published
SNAPSHOT_POINTS = ["snapshot.quiesce", "snapshot.freeze_hooks", "snapshot.dump", "criu.dump", "store.publish",
                   "store.rename", "snapshot.stop_original"]
#: where a restore can die, in order ("store.fetch" stages a copy: the store is read with fetch=copy)
RESTORE_POINTS = ["restore.fetch", "store.fetch", "restore.plan", "restore.criu_restore", "criu.restore",
                  "restore.thaw_hooks", "restore.go"]


def store_url(thaw) -> str:
    return f"dir://{thaw.home / 'artifacts'}?fetch=copy"


def artifacts(thaw) -> list[str]:
    return [a["name"] for a in thaw.json("ls", "--local", "--store", store_url(thaw))]


def settle(thaw) -> None:
    """Wait until no CRIU started by a killed command still works for this home (it outlives its caller)."""
    wait_until(lambda: not criu_working(thaw.home), 60, "CRIU to finish", interval=0.05)


def staging_left(thaw) -> list[str]:
    store = thaw.home / "artifacts"
    node = thaw.home / "staging"
    return sorted(os.listdir(store / ".staging")) + sorted(os.listdir(store / ".trash")) + sorted(
        e for e in (os.listdir(node) if node.is_dir() else []) if not e.startswith("."))


def the_original(thaw) -> dict:
    rows = [w for w in thaw.json("ps") if w["name"] == "w" and w["origin"] == "launched"]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("point", SNAPSHOT_POINTS)
def test_a_snapshot_killed_at_any_phase_leaves_the_original_running_and_nothing_partial(thaw, point: str) -> None:
    thaw.run_worker("w", "--wait")
    token = (thaw.cwd / "w.data.log").read_text().split()[1]

    killed = thaw("snapshot", "w", "--artifact", "a1", "--local", THAW_FAULT=f"{point}:kill")
    assert killed.returncode == -9, killed.stderr
    settle(thaw)

    published = point == "snapshot.stop_original"
    if published:
        # killed after the publish, before stopping the original: recovery (run by `thaw ps`) finishes what was
        # asked and stops it, as the agent's recovery does (pipeline/recovery.py: one recovery for both)
        assert [w for w in thaw.json("ps") if w["name"] == "w" and w["origin"] == "launched"] == []
    else:
        original = the_original(thaw)
        assert original["alive"] and original["parked"], original
    assert artifacts(thaw) == (["a1"] if published else [])  # `thaw ls` also sweeps the dead snapshot's staging
    assert staging_left(thaw) == []
    if published:
        thaw.ok("verify", "a1", "--store", store_url(thaw))
    else:
        thaw.ok("snapshot", "w", "--artifact", "a1", "--local", "--store", store_url(thaw))
    restored = json.loads(thaw.ok("restore", "a1", "--name", "copy", "--local", "--json",
                                  "--store", store_url(thaw)))
    assert state(Path(restored["worker"]["control_dir"]))["token"] == token


@pytest.fixture
def snapshotted(thaw) -> str:
    """A published artifact "a1" of a worker whose original was stopped; returns the worker's token."""
    thaw.run_worker("w", "--wait")
    token = (thaw.cwd / "w.data.log").read_text().split()[1]
    thaw.ok("snapshot", "w", "--artifact", "a1", "--local")
    return token


@pytest.mark.parametrize("point", RESTORE_POINTS)
def test_a_restore_killed_at_any_phase_leaves_no_process_and_the_artifact_intact(thaw, snapshotted: str,
                                                                                  point: str) -> None:
    url = store_url(thaw)
    digest = thaw.json("inspect", "a1", "--store", url)["digest"]

    killed = thaw("restore", "a1", "--name", "copy", "--local", "--store", url, THAW_FAULT=f"{point}:kill")
    assert killed.returncode == -9, killed.stderr
    settle(thaw)

    thaw.ok("ps")  # recovers what the killed restore left
    assert processes_of(thaw.home) == []
    assert thaw.ok("verify", f"a1@{digest}", "--store", url)
    assert staging_left(thaw) == []

    restored = json.loads(thaw.ok("restore", "a1", "--name", "copy", "--local", "--json", "--store", url))
    assert state(Path(restored["worker"]["control_dir"]))["token"] == snapshotted
    assert len(processes_of(thaw.home)) == 1


@pytest.mark.parametrize("point", ["criu.dump", "criu.restore"])
def test_criu_killed_under_an_operation_is_a_clear_failure_that_leaves_nothing(thaw, point: str) -> None:
    thaw.run_worker("w", "--wait")
    if point == "criu.restore":
        thaw.ok("snapshot", "w", "--artifact", "a1", "--local")
        failed = thaw("restore", "a1", "--name", "copy", "--local", THAW_FAULT=f"{point}:kill-child")
        assert failed.stderr.startswith("error: restore of 'a1' failed: criu restore failed: ")
        assert processes_of(thaw.home) == []
        again = ["restore", "a1", "--name", "copy", "--local"]
    else:
        failed = thaw("snapshot", "w", "--artifact", "a1", "--local", THAW_FAULT=f"{point}:kill-child")
        assert failed.stderr.startswith("error: snapshot of 'w' failed: criu dump failed: ")
        original = the_original(thaw)
        assert original["alive"] and original["parked"]
        again = ["snapshot", "w", "--artifact", "a1", "--local"]
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "criu exited without answering" in failed.stderr.splitlines()[0]
    assert artifacts(thaw) == (["a1"] if point == "criu.restore" else [])
    assert staging_left(thaw) == []
    thaw.ok(*again)


def test_a_full_disk_fails_the_snapshot_clearly_and_the_worker_goes_on(thaw, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    os.system(f"mount -t tmpfs -o size=4m tmpfs {small}")  # noqa: S605 - a tiny filesystem of the test's own
    try:
        thaw.run_worker("w", "--wait", TEST_BALLAST_MB="16")
        failed = thaw("snapshot", "w", "--artifact", "a1", "--local", "--store", str(small / "store"))
        assert failed.returncode == 1 and "Traceback" not in failed.stderr
        assert failed.stderr.startswith("error: snapshot of 'w' failed: ")
        assert "No space left on device" in failed.stderr.splitlines()[0]
        assert "hint: the artifact store or its staging is full" in failed.stderr
        original = the_original(thaw)
        assert original["alive"] and original["parked"]
        assert os.listdir(small / "store" / ".staging") == [] and thaw.json("ls", "--local", "--store",
                                                                              str(small / "store")) == []
        thaw.ok("snapshot", "w", "--artifact", "a1", "--local")  # room elsewhere: the same worker snapshots fine
    finally:
        os.system(f"umount -l {small}")  # noqa: S605


def test_an_unreachable_store_fails_clearly_before_the_worker_is_touched(thaw) -> None:
    thaw.run_worker("w", "--wait")
    # nothing listens on this port of the loopback: connection refused at once
    url = "s3://bucket/thaw?endpoint=http://127.0.0.1:9"
    done = thaw("snapshot", "w", "--artifact", "a1", "--local", "--store", url, AWS_ACCESS_KEY_ID="x",
                AWS_SECRET_ACCESS_KEY="x", timeout=240)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "is the object store reachable" in done.stderr
    original = the_original(thaw)
    assert original["alive"] and original["parked"]
    thaw.ok("snapshot", "w", "--artifact", "a1", "--local")


AGENT_POINTS = ["snapshot.freeze_hooks", "criu.dump", "store.rename", "restore.criu_restore", "criu.restore",
                "restore.thaw_hooks"]


class Agent:
    """``thaw agent serve`` on a socket of the test's own; ``start(fault)`` (re)starts it."""

    def __init__(self, thaw, sock: Path) -> None:
        self.thaw, self.sock, self.proc = thaw, sock, None

    def start(self, fault: str | None = None) -> None:
        env = {**self.thaw.env, **({"THAW_FAULT": fault} if fault else {})}
        self.proc = subprocess.Popen([str(THAW), "agent", "serve", "--socket", str(self.sock), "--home",
                                      str(self.thaw.home)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(lambda: self.answers(), 30, "the agent to answer")

    def answers(self) -> bool:
        return self.thaw("ls", THAW_AGENT=str(self.sock)).returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture
def agent(thaw, tmp_path: Path):
    a = Agent(thaw, tmp_path / "agent.sock")
    yield a
    a.stop()


@pytest.mark.parametrize("point", AGENT_POINTS)
def test_the_agent_killed_at_any_phase_recovers_on_restart_and_loses_nothing(thaw, agent: Agent, point: str) -> None:
    via = {"THAW_AGENT": str(agent.sock)}
    thaw.run_worker("w", "--wait")
    token = (thaw.cwd / "w.data.log").read_text().split()[1]
    restoring = point.startswith("restore") or point == "criu.restore"
    if restoring:
        thaw.ok("snapshot", "w", "--artifact", "a1", "--local")
    agent.start(f"{point}:kill")

    op = ["restore", "a1", "--name", "copy"] if restoring else ["snapshot", "w", "--artifact", "a1"]
    cut = thaw(*op, **via)
    assert cut.returncode != 0 and "Traceback" not in cut.stderr
    assert agent.proc.wait(timeout=60) == -signal.SIGKILL
    settle(thaw)
    agent.start()  # recovery runs first

    if restoring:
        assert [p for p in processes_of(thaw.home)] == []
        thaw.ok("verify", "a1")
    else:
        original = the_original(thaw)
        assert original["alive"] and original["parked"], original
        assert artifacts(thaw) == []
    assert staging_left(thaw) == []

    done = json.loads(thaw.ok(*op, "--json", **via))
    if restoring:
        assert state(Path(done["worker"]["control_dir"]))["token"] == token
    else:
        assert done["artifact"] == "a1"
        thaw.ok("verify", "a1")
