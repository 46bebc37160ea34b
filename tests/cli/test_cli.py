"""The ``thaw`` command end to end: run → ps → snapshot → ls/inspect/verify → restore → stop → rm,
and one clear line for every bad input."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from workers import SERVE, state


@pytest.mark.criu
def test_a_worker_s_life_through_the_cli(thaw, tmp_path: Path) -> None:
    out = thaw.run_worker("w", "--wait")
    assert re.match(r"started w \(w-[0-9a-f]{8}\), pid \d+; log: .*/worker\.log", out)
    [w] = thaw.json("ps")
    assert (w["name"], w["alive"], w["parked"], w["origin"]) == ("w", True, True, "launched")

    out = thaw.ok("snapshot", "w", "-a", "a1", "--leave-running")
    assert out.startswith("snapshot a1 (") and "worker w goes on serving" in out
    [w] = thaw.json("ps")
    assert (w["alive"], w["parked"]) == (True, False)  # released: it serves
    assert state(Path(w["control_dir"]))["outcome"] == "released"

    [listed] = thaw.json("ls")
    assert (listed["name"], listed["worker"]) == ("a1", "w") and listed["bytes"] > 0
    assert thaw.ok("ls").splitlines()[0] == f"1 artifact in {thaw.home / 'artifacts'}"  # which store it lists
    inspected = thaw.json("inspect", "a1")
    assert inspected["name"] == "a1" and inspected["schema_version"] == 2
    assert inspected["digest"] == listed["digest"]
    assert inspected["worker"]["argv"][-1] == str(SERVE)
    assert inspected["worker"]["canary"] is not None
    assert any(f["path"].startswith("images/") for f in inspected["files"])
    assert {"quiesce", "freeze_hooks", "dump"} <= set(inspected["timings"])
    assert "schema v2" in thaw.ok("inspect", "a1")
    assert thaw.ok("verify", "a1").startswith(f"ok a1: {len(inspected['files'])} files")

    out = thaw.ok("restore", "a1", "--name", "copy")
    assert re.match(r"restored copy \(copy-[0-9a-f]{8}\), pid \d+, canary passed", out)
    copy_dir = Path(re.search(r"control directory: (\S+)", out).group(1))
    got = state(copy_dir)
    assert got["outcome"] == "thawed" and got["token"] == state(Path(w["control_dir"]))["token"]
    running = {i["name"]: i for i in thaw.json("ps")}
    assert set(running) == {"w", "copy"}
    assert running["copy"]["origin"] == "restored" and running["copy"]["artifact"] == "a1"
    assert "restored from a1" in thaw.ok("ps")

    assert thaw.ok("stop", "copy").startswith("stopped copy")
    assert thaw.ok("stop", "w").startswith("stopped w")
    assert thaw.json("ps") == []
    assert {i["name"]: i["state"] for i in thaw.json("ps", "--all")} == {"w": "stopped", "copy": "stopped"}

    assert thaw.ok("rm", "a1").strip() == "removed a1"
    assert thaw.json("ls") == []
    assert thaw.ok("ls").strip() == f"no artifacts in {thaw.home / 'artifacts'}"
    thaw.fails("verify", "a1", message="no artifact named 'a1'")
    thaw.fails("restore", "a1", message="no artifact named 'a1'")


@pytest.mark.criu
def test_a_snapshot_without_leave_running_ends_the_original(thaw) -> None:
    thaw.run_worker("w", "--wait")

    thaw.ok("snapshot", "w", "-a", "a1")

    assert thaw.json("ps") == []
    assert [i["state"] for i in thaw.json("ps", "--all")] == ["snapshotted"]
    thaw.fails("snapshot", "w", "-a", "a2", message="worker 'w' is not running (last state: snapshotted)")


@pytest.mark.criu
def test_a_worker_that_never_quiesces_times_out_with_a_clear_message(thaw) -> None:
    thaw.run_worker("w", TEST_NO_QUIESCE="1")

    thaw.fails("snapshot", "w", "-a", "a1", "--ready-timeout", "1",
               message="worker 'w' did not reach its quiesce point within 1s")

    assert thaw.json("ls") == []


@pytest.mark.criu
def test_a_failed_dump_reports_criu_s_reason_and_the_worker_goes_on(thaw, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as outside:
        outside.bind(str(tmp_path / "outside.sock"))
        outside.listen()
        thaw.run_worker("w", "--wait", TEST_HOLD_SOCKET=str(tmp_path / "outside.sock"))
        with outside.accept()[0]:  # a live connection to a peer outside the sandbox: CRIU cannot dump it
            done = thaw("snapshot", "w", "-a", "a1")

    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: snapshot of 'w' failed: it holds a unix socket connected to {tmp_path / 'outside.sock'}, outside "
        "its sandbox; CRIU cannot snapshot that (External socket is used)",
        "hint: open sockets after thaw.worker.quiesce() returns, and close connections to other services before it "
        "(a server thaw does not own: thaw run --park-at-listen); the worker is parked as before"]
    assert "RLIMIT_NOFILE" not in done.stderr and "Traceback" not in done.stderr
    assert thaw.json("ls") == []
    thaw.ok("release", "w")
    [w] = thaw.json("ps")
    assert state(Path(w["control_dir"]))["outcome"] == "released"


@pytest.mark.parametrize(("args", "message"), [
    (["snapshot", "nope", "-a", "a1"], "no worker named 'nope' on this node"),
    (["release", "nope"], "no worker named 'nope' on this node"),
    (["stop", "nope"], "no worker named 'nope' on this node"),
    (["restore", "nope"], "no artifact named 'nope' in dir://"),
    (["inspect", "nope"], "no artifact named 'nope'"),
    (["verify", "nope"], "no artifact named 'nope'"),
    (["rm", "nope"], "no artifact named 'nope'"),
    (["snapshot", "w", "-a", "Bad/Name"], "artifact name: 'Bad/Name' is not a valid name"),
    (["restore", "../etc"], "artifact name: '../etc' is not a valid name"),
    (["run", "--name", "Bad Name", "--", "true"], "worker name: 'Bad Name' is not a valid name"),
    (["ls", "--store", "/proc/thaw-x"], "store: cannot use /proc/thaw-x"),
    (["restore", "a1", "--store", "/proc/thaw-x"], "store: cannot use /proc/thaw-x"),
    (["snapshot", "w", "-a", "a1", "--store", "/proc/thaw-x"], "store: cannot use /proc/thaw-x"),
    (["ls", "--store", "ftp://host/x"], "store: unknown store URL 'ftp://host/x'"),
])
def test_bad_input_gets_one_line_and_a_non_zero_exit(thaw, args: list[str], message: str) -> None:
    thaw.fails(*args, message=message)


def test_run_of_a_missing_binary_fails_naming_it(thaw) -> None:
    thaw.fails("run", "--name", "w", "--", "/no/such/binary", message="command: cannot start '/no/such/binary': No such file")
    assert [w["state"] for w in thaw.json("ps", "--all")] == ["failed"]


def test_run_without_a_command_is_a_usage_error(thaw) -> None:
    thaw.fails("run", "--name", "w", message="no command given", code=2)


@pytest.mark.parametrize("command", [["ls"], ["run"], ["snapshot"], ["restore"], ["agent", "serve"], ["demo"]])
def test_help_lists_flags_without_a_value_label(thaw, command: list[str]) -> None:
    out = thaw.ok(*command, "--help")

    assert "<bool>" not in out  # a flag takes no value
    assert "--help" in out and re.search(r"--\w+\s+<(str|path|int|float)>", out) is not None  # options that do, say so


def test_gc_prunes_directories_of_workers_gone_longer_than_its_age(thaw) -> None:
    """Before: instance directories (logs, CRIU logs of every operation) were never removed."""
    thaw.run_worker("gone", "--wait")
    thaw.ok("stop", "gone")
    thaw.run_worker("live", "--wait")
    dirs = {w["name"]: Path(w["control_dir"]) for w in thaw.json("ps", "--all")}

    kept = thaw.ok("gc")  # default age 24h: both are young
    assert "0 instance directories older than 24h" in kept and dirs["gone"].is_dir()
    pruned = thaw.ok("gc", "--older-than", "0")

    assert "1 instance directories older than 0" in pruned
    assert not dirs["gone"].exists() and dirs["live"].is_dir()
    assert [w["name"] for w in thaw.json("ps", "--all")] == ["live"]
    thaw.fails("gc", "--older-than", "soon", message="--older-than: 'soon' is not a duration", code=2)
