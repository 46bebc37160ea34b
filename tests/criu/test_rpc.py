"""Talking to CRIU over RPC: real CRIU where it can show the behaviour, a fake ``criu swrk`` where it cannot.

CRIU logs ``rlimit: Can't setup RLIMIT_NOFILE`` as an error in every run (it cannot
raise the limit in a container) and that is harmless (shared/probe/README.md). thaw
must never report it as the reason something failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thaw.criu import Criu, DumpOptions, RestoreOptions, check, dump, find_criu, log_tail, restore, rpc
from thaw.criu import messages
from thaw.errors import CriuError

FAKE = Path(__file__).with_name("fake_criu.py")
RLIMIT = "Can't setup RLIMIT_NOFILE"


# -- log_tail -------------------------------------------------------------------------------------------

def write_log(tmp_path: Path, *lines: str) -> Path:
    log = tmp_path / "criu.log"
    log.write_text("\n".join(lines) + "\n")
    return log


def test_log_tail_keeps_errors_and_drops_harmless_lines(tmp_path: Path) -> None:
    log = write_log(
        tmp_path,
        "(00.000100) Version: 4.1",
        "(00.000150) File /run/criu.kdat does not exist",
        "(00.000151) Can't keep kdat cache on non-tempfs",
        "(00.021689) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted",
        "(00.030000) restoring task 1",
        "(00.034885) restore late stage hook for external plugin failed",
        "(00.066497) Error (criu/sk-unix.c:874): unix: External socket is used. Consider using --ext-unix-sk option.",
        "(00.066580) Error (criu/cr-dump.c:2111): Dumping FAILED.",
    )

    assert log_tail(log).splitlines() == [
        "(00.066497) Error (criu/sk-unix.c:874): unix: External socket is used. Consider using --ext-unix-sk option.",
        "(00.066580) Error (criu/cr-dump.c:2111): Dumping FAILED.",
    ]
    assert log_tail(log, lines=1) == "(00.066580) Error (criu/cr-dump.c:2111): Dumping FAILED."


def test_log_tail_without_errors_is_the_last_useful_lines(tmp_path: Path) -> None:
    log = write_log(tmp_path, "(00.1) one", "(00.2) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE",
                    "(00.3) two", "(00.4) three")

    assert log_tail(log, lines=2) == "(00.3) two\n(00.4) three"


def test_log_tail_of_no_log_is_empty(tmp_path: Path) -> None:
    assert log_tail(tmp_path / "missing.log") == ""
    assert log_tail(None) == ""


def test_a_criu_error_carries_criu_s_message_and_log_tail() -> None:
    exc = CriuError("dump", "Dumping FAILED.", errno=3, log_tail="(00.1) Error (x.c:1): boom")

    assert str(exc) == "criu dump failed: Dumping FAILED.\n--- criu log (tail) ---\n(00.1) Error (x.c:1): boom"
    assert (exc.operation, exc.criu_message, exc.errno) == ("dump", "Dumping FAILED.", 3)


# -- a fake criu swrk: failure paths on demand ----------------------------------------------------------

@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``fake(mode) -> (criu, record)``: a Criu that runs fake_criu.py, and a function reading what it received."""
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_CRIU_RECORD", str(record))

    def make(mode: str) -> tuple[Criu, callable]:
        monkeypatch.setenv("FAKE_CRIU_MODE", mode)
        return Criu(argv=(sys.executable, str(FAKE)), version="4.1", source="test"), lambda: json.loads(
            record.read_text())

    return make


def test_a_harmless_first_error_is_replaced_by_the_real_one(tmp_path: Path, fake) -> None:
    criu, _ = fake("harmless-first")

    with pytest.raises(CriuError) as failed:
        restore(RestoreOptions(images_dir=tmp_path / "img", work_dir=tmp_path / "work"), criu=criu)

    assert failed.value.criu_message == "mnt: No mapping for 123:(null) mountpoint"
    assert failed.value.errno == 1
    assert RLIMIT not in str(failed.value)
    assert failed.value.log_tail.endswith("mnt: No mapping for 123:(null) mountpoint")
    assert RLIMIT in (tmp_path / "work" / "restore.log").read_text()  # it was there, and was left out


def test_a_generic_criu_message_gives_way_to_the_first_real_error_of_its_log(tmp_path: Path, fake) -> None:
    criu, _ = fake("fail")  # cr_errmsg "Restoring FAILED.", a real error earlier in the log

    with pytest.raises(CriuError) as err:
        restore(RestoreOptions(images_dir=tmp_path / "img", work_dir=tmp_path / "work"), criu=criu)
    headline = str(err.value).splitlines()[0]
    assert headline.startswith("criu restore failed: ") and "FAILED" not in headline
    assert headline == "criu restore failed: mnt: No mapping for 123:(null) mountpoint"  # fake_criu.REAL
    assert err.value.criu_message == headline.removeprefix("criu restore failed: ")
    assert "--- criu log (tail) ---" in str(err.value)


def test_criu_exiting_without_an_answer_reports_its_stderr(tmp_path: Path, fake) -> None:
    criu, _ = fake("silent")

    with pytest.raises(CriuError, match="criu exited without answering: fake criu: giving up"):
        dump(DumpOptions(pid=1, images_dir=tmp_path / "img", work_dir=tmp_path / "work"), criu=criu)


def test_a_criu_that_never_answers_times_out(tmp_path: Path, fake) -> None:
    criu, _ = fake("hang")
    req = messages.Request(type=messages.DUMP)
    req.opts.images_dir_fd = 0

    with pytest.raises(CriuError, match="no answer within 1s"):
        rpc._call(req, "dump", None, criu=criu, timeout=1.0)


def test_a_restore_sends_its_options_and_passes_inherited_descriptors_down(tmp_path: Path, fake) -> None:
    criu, received = fake("ok")
    r, w = os.pipe()
    try:
        pid, seconds = restore(RestoreOptions(images_dir=tmp_path / "img", work_dir=tmp_path / "work",
                                              external=["mnt[thaw_dev]:/dev"], join_ns=[("net", "/proc/1/ns/net")],
                                              inherit_fds={"thaw-netns": r}, timeout_s=77), criu=criu)
    finally:
        os.close(r)
        os.close(w)

    assert pid == 4242 and seconds > 0
    got = received()
    opts = got["request"]["opts"]
    assert got["request"]["type"] == "RESTORE"
    assert got["inherited_open"] == {"thaw-netns": True}  # the fd exists in the swrk process, under its number
    assert opts["inherit_fd"] == [{"key": "thaw-netns", "fd": r}]
    assert opts["rst_sibling"] is True  # the restored root becomes our child, so that we can reap it
    assert opts["external"] == ["mnt[thaw_dev]:/dev"]
    assert opts["join_ns"] == [{"ns": "net", "ns_file": "/proc/1/ns/net"}]
    assert opts["timeout"] == 77
    assert opts["manage_cgroups_mode"] == "IGNORE"
    assert opts["network_lock"] == "SKIP"
    assert opts["log_file"] == "restore.log" and opts["log_level"] == 4


def test_a_dump_sends_the_pid_and_leave_running(tmp_path: Path, fake) -> None:
    criu, received = fake("ok")

    dump(DumpOptions(pid=31337, images_dir=tmp_path / "img", work_dir=tmp_path / "work", leave_running=True,
                     external=["net[1]:thaw-netns"]), criu=criu)

    opts = received()["request"]["opts"]
    assert (opts["pid"], opts["leave_running"], opts["external"]) == (31337, True, ["net[1]:thaw-netns"])


def test_an_unstartable_criu_is_a_criu_error(tmp_path: Path) -> None:
    missing = Criu(argv=(str(tmp_path / "no-criu"),), version="4.1", source="test")

    with pytest.raises(CriuError, match="cannot start"):
        check(tmp_path, criu=missing)


# -- real CRIU ------------------------------------------------------------------------------------------

@pytest.mark.criu
def test_the_installed_criu_is_at_least_4_and_its_check_passes(tmp_path: Path) -> None:
    criu = find_criu()

    assert criu.major >= 4
    check(tmp_path, criu=criu)


@pytest.mark.criu
def test_dump_and_restore_a_plain_process_round_trip(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    restored = 0
    try:
        dump(DumpOptions(pid=sleeper.pid, images_dir=tmp_path / "img", work_dir=tmp_path / "w1", leave_running=True))
        assert sleeper.poll() is None  # leave_running: still there
        dump(DumpOptions(pid=sleeper.pid, images_dir=tmp_path / "img2", work_dir=tmp_path / "w2"))
        assert sleeper.wait(10) == -9  # dumped without leave_running: CRIU killed it; now it is reaped

        restored, seconds = restore(RestoreOptions(images_dir=tmp_path / "img2", work_dir=tmp_path / "w3"))

        assert restored == sleeper.pid  # same pid (free again), and our child: rst_sibling
        assert Path(f"/proc/{restored}/cmdline").read_bytes() == b"sleep\x00300\x00"
        assert seconds > 0
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        if restored:
            os.kill(restored, 9)
            os.waitpid(restored, 0)


@pytest.mark.criu
def test_a_failed_dump_reports_criu_s_reason_and_not_the_rlimit_line(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid nobody has now

    with pytest.raises(CriuError) as failed:
        dump(DumpOptions(pid=gone.pid, images_dir=tmp_path / "img", work_dir=tmp_path / "work"))

    assert failed.value.operation == "dump"
    assert "Dumping FAILED" in str(failed.value)
    assert RLIMIT in (tmp_path / "work" / "dump.log").read_text()
    assert RLIMIT not in str(failed.value)


@pytest.mark.criu
def test_a_failed_restore_reports_criu_s_reason_and_not_the_rlimit_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    with pytest.raises(CriuError) as failed:
        restore(RestoreOptions(images_dir=tmp_path / "empty", work_dir=tmp_path / "work"))

    assert failed.value.operation == "restore"
    assert failed.value.criu_message  # CRIU's own words, e.g. "Unexpected EOF on (empty-image)"
    assert failed.value.criu_message in failed.value.log_tail
    assert RLIMIT in (tmp_path / "work" / "restore.log").read_text()
    assert RLIMIT not in str(failed.value)


def test_an_inet_socket_that_this_criu_cannot_dump_gets_the_reason_and_the_fix() -> None:
    from thaw.criu.rpc import explain

    hint = explain("sockets: Can't get 1:16 opt: Operation not supported")
    assert hint is not None and "Linux >= 6.16" in hint and "--park-at-listen" in hint
    assert explain("External socket is used") is None
