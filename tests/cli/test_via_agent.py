"""The CLI goes through a node agent when one runs: the agent holds the worker, runs the job and audits it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from workers import SERVE, state

THAW = Path(sys.executable).with_name("thaw")

pytestmark = pytest.mark.criu


def test_snapshot_and_restore_go_through_the_agent_named_by_thaw_agent(thaw, agent: Path) -> None:
    thaw.ok("run", "--name", "w", "--wait", "--", sys.executable, str(SERVE))
    snap = json.loads(thaw.ok("snapshot", "w", "-a", "a1", "--leave-running", "--json", THAW_AGENT=str(agent)))
    assert snap["artifact"] == "a1" and snap["digest"].startswith("sha256:")
    restored = json.loads(thaw.ok("restore", "a1", "--name", "copy", "--json", THAW_AGENT=str(agent)))
    assert restored["canary"]["match"] is True
    assert state(Path(restored["worker"]["control_dir"]))["outcome"] == "thawed"

    audit = [json.loads(line) for line in (thaw.home / "agent" / "audit.log").read_text().splitlines()]
    done = {(a["operation"], a["outcome"]) for a in audit}
    assert ("snapshot", "succeeded") in done and ("restore", "succeeded") in done

    listed = json.loads(thaw.ok("ls", "--json", THAW_AGENT=str(agent)))
    assert [a["name"] for a in listed] == ["a1"]
    assert thaw.ok("ls", THAW_AGENT=str(agent)).splitlines()[0] == f"1 artifact in the store of the agent at {agent}"


def test_an_agent_named_but_not_answering_is_a_clear_error(thaw, tmp_path: Path) -> None:
    thaw.fails("ls", message="no thaw agent answers at", THAW_AGENT=str(tmp_path / "nobody.sock"))


def test_local_runs_in_process_even_with_an_agent_named(thaw, tmp_path: Path) -> None:
    out = thaw.ok("ls", "--local", THAW_AGENT=str(tmp_path / "nobody.sock"))
    assert out.strip() == f"no artifacts in {thaw.home / 'artifacts'}"  # this process's own store
