"""A thaw home under a tmpfs, a bind mount, nested, stacked or covering mounts: workers start, park, snapshot and restore.

The sandbox trims every mount a worker does not need. A kept mount (the home's) lying
under a trimmed one (a tmpfs /tmp, a node's bind mount) used to go with it: the worker
could not open its log and never parked. Each case runs in a mount namespace of its own
(mounted_home.py), with real sandboxes and real CRIU. Its paths are short: a control
socket's path must fit in 107 bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.criu  # root for the mounts, CRIU for snapshot and restore

DRIVER = Path(__file__).resolve().parent / "mounted_home.py"


@pytest.mark.parametrize("kind", ["tmpfs", "bind", "nested", "stacked", "covered"])
def test_a_home_under_mounts_parks_and_restores(kind: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, str(DRIVER), kind,
                          str(tmp_path), str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())

    assert set(report["mounts"]) <= set(report["keep"])  # every mount the home lies under stays in the sandbox
    assert report["warm"][0] == "warm"
    assert report["token"] == report["warm"][1]  # the restored copy has the original's memory
    assert (report["outcome"], report["canary"]) == ("thawed", "passed")
