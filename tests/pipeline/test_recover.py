"""A restorer that dies without unwinding (SIGKILL, OOM) leaves its copy parked; ``recover`` kills it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from thaw import pipeline
from thaw.config import Settings
from thaw.pipeline import Instance
from thaw.store import Store
from workers import processes_of, wait_until

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
