"""Every command prints the same ``--json`` whether it ran in the CLI's process or through the node agent.

The same life of a worker runs twice on one thaw home — once with ``--local``, once through an
agent serving that home — and each command's output is compared after masking what differs
between any two runs (ids, pids, times, sizes, digests, timings, paths).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from workers import SERVE

THAW = Path(sys.executable).with_name("thaw")

pytestmark = pytest.mark.criu

#: values that differ between two runs of the same commands; their type must still agree
VOLATILE = {"id", "host_pid", "created_at", "started_at", "control_dir", "artifact_id", "digest", "bytes", "size",
            "timings", "write_gbps", "read_gbps", "seconds", "worker_id", "owner_pid", "pid", "chunks", "files",
            "kernel", "freeze_report", "residual", "at", "stdio",
            "canary", "expected", "got"}  # the test worker's canary is a digest of random state


def masked(value: Any, key: str = "") -> Any:
    if key in VOLATILE:
        return f"<{type(value).__name__}>"
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def a_life(thaw, route: list[str]) -> dict[str, Any]:
    """Every command with --json, in the order a user runs them; their outputs by step."""

    def run(command: str, *args: str, **env: str) -> Any:
        return json.loads(thaw.ok(command, *route, "--json", *args, **env))

    out: dict[str, Any] = {}
    out["run"] = run("run", "--name", "w", "--wait", "--", sys.executable, str(SERVE),
                     TEST_LOG=str(thaw.cwd / "w.data.log"))
    out["ps"] = run("ps")
    out["snapshot"] = run("snapshot", "w", "-a", "a1", "--leave-running")
    out["ls"] = run("ls")
    out["inspect"] = run("inspect", "a1")
    out["verify"] = run("verify", "a1")
    out["restore"] = run("restore", "a1", "--name", "copy")
    out["gc"] = run("gc")
    out["stop copy"] = run("stop", "copy")
    out["stop w"] = run("stop", "w")
    out["run parked"] = run("run", "--name", "p", "--wait", "--", sys.executable, str(SERVE),
                            TEST_LOG=str(thaw.cwd / "p.data.log"))
    out["release"] = run("release", "p")
    out["stop p"] = run("stop", "p")
    out["rm"] = run("rm", "a1")
    out["ls after rm"] = run("ls")
    return out


def test_each_command_prints_the_same_json_with_and_without_an_agent(thaw, agent: Path) -> None:
    local = a_life(thaw, ["--local"])
    through_agent = a_life(thaw, ["--agent", str(agent)])

    assert list(local) == list(through_agent)
    for step in local:
        assert masked(local[step]) == masked(through_agent[step]), step
    # and it is what it says: the restored copy passed its canary both times, the original went on serving
    for life in (local, through_agent):
        canary = life["restore"]["canary"]
        assert canary["checked"] and canary["match"] and canary["expected"] == canary["got"]
    assert local["snapshot"]["original"] == through_agent["snapshot"]["original"] == "running"
    # the agent ran the second life: its audit log saw every operation of it
    audit = [json.loads(line) for line in (thaw.home / "agent" / "audit.log").read_text().splitlines()]
    done = {(a["operation"], a["outcome"]) for a in audit}
    assert {("launch", "succeeded"), ("snapshot", "succeeded"), ("restore", "succeeded"), ("stop", "succeeded"),
            ("release", "succeeded"), ("delete", "succeeded")} <= done
