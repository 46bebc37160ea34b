"""A restorer that dies without unwinding (SIGKILL, OOM) leaves its copy parked; ``recover`` kills it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest

from thaw import pipeline
from thaw.config import Settings
from thaw.pipeline import Instance, instances
from thaw.store import Store
from workers import criu_working, processes_of, wait_until

pytestmark = pytest.mark.criu

RESTORE = """
import sys
from thaw.config import Settings
from thaw import pipeline
pipeline.restore(Settings(home=sys.argv[1], store=sys.argv[2]), "a1", name="copy")
"""


def restoring_copy(settings: Settings) -> Instance | None:
    """The restored copy once CRIU has restored it (its thaw hook is then running)."""
    for inst in pipeline.list_instances(settings):
        if inst.origin == "restored" and inst.host_pid and inst.alive():
            return inst
    return None


def test_a_copy_whose_restorer_was_killed_is_recovered(settings: Settings, store: Store, launch_worker) -> None:
    launch_worker(TEST_THAW_SLEEP="60")  # the restored copy's thaw hook takes a minute
    pipeline.snapshot(settings, "w", "a1", store=store)
    restorer = subprocess.Popen([sys.executable, "-c", RESTORE, str(settings.home), settings.store_url],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    copy = wait_until(lambda: restoring_copy(settings), 30, "CRIU to restore the copy")

    assert (copy.state, copy.owner_pid) == ("restoring", restorer.pid)
    assert pipeline.recover(settings) == []  # its restorer is alive: not ours to touch
    assert copy.alive()

    os.kill(restorer.pid, signal.SIGKILL)
    restorer.wait(10)
    restorer.stdout.close()
    assert copy.alive()  # nobody unwound: the copy is left parked in its thaw hook

    recovered = pipeline.recover(settings)

    assert [i.id for i in recovered] == [copy.id]
    assert not copy.alive()
    assert pipeline.find(settings, copy.id).state == "failed"
    assert processes_of(settings.home) == []
    assert pipeline.recover(settings) == []  # done once
    store.verify("a1")


def test_a_copy_is_recovered_although_a_long_dead_instance_had_its_network_namespace_inode(
        settings: Settings, store: Store, launch_worker) -> None:
    """The kernel reuses namespace inodes: a record of an instance gone long ago may name the inode the
    copy's namespace has now. Before the fix, recover() took that as "CRIU made no copy" and left the copy
    running, unseen by `thaw ps`/`thaw gc` (3 of 7 killed restores)."""
    launch_worker()
    pipeline.snapshot(settings, "w", "a1", store=store)
    # killed while CRIU restores: CRIU usually finishes the copy, and thaw never learns its pid. On a loaded
    # machine the kill can come early enough that CRIU gives up with its client; that sets nothing up, so the
    # kill is tried again (the records it left are settled first) until a copy runs
    for _ in range(5):
        restorer = subprocess.run([sys.executable, "-c", RESTORE, str(settings.home), settings.store_url],
                                  env={**os.environ, "THAW_FAULT": "criu.restore:kill"}, check=False,
                                  capture_output=True, timeout=60)
        assert restorer.returncode == -signal.SIGKILL
        wait_until(lambda: not criu_working(settings.home), 60, "CRIU to finish the restore")
        if processes_of(settings.home):
            break
        pipeline.recover(settings)
    copy = next(i for i in pipeline.list_instances(settings) if i.origin == "restored" and i.state == "restoring")
    assert (copy.state, copy.host_pid) == ("restoring", 0) and copy.netns
    assert len(processes_of(settings.home)) == 1  # the copy runs, parked, unknown to thaw
    long_dead = instances.create(settings, "old", origin="restored", artifact="a0", state="stopped",
                                 netns=copy.netns, created_at=copy.created_at - timedelta(days=3))

    recovered = pipeline.recover(settings)

    assert [i.id for i in recovered] == [copy.id]
    assert processes_of(settings.home) == []
    assert pipeline.find(settings, long_dead.id, alive=False).state == "stopped"  # a record of the past: untouched
