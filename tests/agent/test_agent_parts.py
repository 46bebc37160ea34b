"""The agent's parts on their own: holds, the job book, tokens, the audit log, canary differences."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from thaw.agent.audit import GENESIS, AuditLog, verify as verify_audit
from thaw.agent.auth import Caller, Tokens
from thaw.agent.holds import Holds
from thaw.agent.jobs import JobBook
from thaw.api.models import JobError, JobKind, JobState, VerifyResult
from thaw.pipeline.canary import differences
from thaw.errors import BusyError, ConfigError


def test_one_operation_per_worker_and_exclusive_artifact_writes():
    holds = Holds()
    holds.take("j1", "snapshot", worker="w-1", worker_label="w", artifact="a", exclusive=True)
    with pytest.raises(BusyError, match=r"worker 'w' is busy: snapshot \(job j1\)"):
        holds.take("j2", "snapshot", worker="w-1", worker_label="w", artifact="b", exclusive=True)
    with pytest.raises(BusyError, match="being written by job j1"):
        holds.take("j3", "restore", artifact="a")
    holds.take("j4", "restore", artifact="b")  # j2 failed before taking anything
    holds.take("j5", "verify", artifact="b")
    with pytest.raises(BusyError, match="in use"):
        holds.take("j6", "delete", artifact="b", exclusive=True)
    assert holds.worker_holder("w-1") == "j1"
    for j in ("j1", "j4", "j5"):
        holds.drop(j)
    holds.take("j7", "delete", artifact="b", exclusive=True)
    holds.take("j8", "snapshot", worker="w-1", artifact="a", exclusive=True)


def test_job_book_is_durable_and_lists_unfinished_jobs(tmp_path):
    db = tmp_path / "jobs.db"
    book = JobBook(db)
    done = book.create(JobKind.VERIFY, worker=None, artifact="a", request={}, caller={"uid": 0}, node="n")
    book.start(done.id)
    verified = VerifyResult(artifact="a", artifact_id="1", digest="xxh3_128:00", bytes=1, files=1, seconds=0.1)
    book.succeed(done.id, verified)
    cut = book.create(JobKind.SNAPSHOT, worker="w", artifact="b", request={"artifact": "b"}, caller={}, node="n")
    book.start(cut.id)
    book.progress(cut.id, "dump", 0.5, "CRIU dump")
    book.journal(cut.id, worker_id="w-1")
    book.journal(cut.id, phases=["quiesce", "dump"])
    book.close()

    again = JobBook(db)  # a new agent process
    [unfinished] = again.list(unfinished=True)
    assert unfinished.id == cut.id and unfinished.progress.phase == "dump"
    assert again.journal_of(cut.id) == {"worker_id": "w-1", "phases": ["quiesce", "dump"]}
    assert again.get(done.id).result == verified and again.get(done.id).state is JobState.SUCCEEDED
    again.fail(cut.id, JobError(reason="agent_restarted", message="agent restarted during dump"))
    assert again.list(unfinished=True) == []
    assert again.get(cut.id).error.message == "agent restarted during dump"


def test_tokens_file(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("# comment\n\noperator:abcdefghijklmnopqrstuvwxyz\n0123456789abcdef0123\n"
                 "prometheus@read:readreadreadreadread\n")
    tokens = Tokens.load(f)
    assert tokens.identify("Bearer abcdefghijklmnopqrstuvwxyz") == Caller("operator", "operate")
    assert tokens.identify("bearer 0123456789abcdef0123").identity.startswith("token-")
    reader = tokens.identify("Bearer readreadreadreadread")
    assert reader == Caller("prometheus", "read") and reader.may("GET") and not reader.may("POST")
    assert tokens.identify("Bearer nope") is None and tokens.identify(None) is None
    assert tokens.identify("Basic abcdefghijklmnopqrstuvwxyz") is None
    assert not Tokens.load(None)
    f.write_text("short\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        Tokens.load(f)
    f.write_text("x@admin:abcdefghijklmnopqrstuvwxyz\n")
    with pytest.raises(ConfigError, match="unknown scope 'admin'"):
        Tokens.load(f)


def test_audit_log_appends_json_lines_from_many_threads(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    threads = [threading.Thread(target=lambda i=i: [log.record("restore", "succeeded", caller={"uid": i},
                                                                artifact="a", artifact_id="id", digest="d")
                                                     for _ in range(20)]) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = log.read()
    assert len(entries) == 160
    assert set(entries[0]) == {"time", "caller", "operation", "worker", "artifact", "artifact_id", "digest",
                               "outcome", "prev"}
    (tmp_path / "audit.log").rename(tmp_path / "audit.log.1")  # rotation: a fresh file at once
    log.record("delete", "succeeded")
    assert json.loads((tmp_path / "audit.log").read_text())["operation"] == "delete"
    # the chain runs on through the rotation, and through a restart of the agent
    AuditLog(tmp_path / "audit.log").record("stop", "succeeded")
    report = verify_audit([tmp_path / "audit.log.1", tmp_path / "audit.log"])
    assert (report.records, report.anchor, report.bad) == (162, GENESIS, None)
    assert oct((tmp_path / "audit.log").stat().st_mode & 0o777) == "0o600"


def audit_lines(path):
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("tamper", ["change", "remove", "insert", "swap"])
def test_a_tampered_audit_log_is_named_at_its_first_bad_record(tmp_path, tamper: str) -> None:
    """Before: nothing tied one record to another; any line could be changed or removed unseen."""
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    for i in range(10):
        log.record("restore", "succeeded", caller={"uid": 0}, artifact=f"a{i}")
    assert verify_audit([path]).bad is None
    lines = audit_lines(path)
    if tamper == "change":  # who did it: uid 0 becomes uid 1000 in record 5
        lines[4] = lines[4].replace(b'"uid": 0', b'"uid": 1000')
    elif tamper == "remove":
        del lines[4]
    elif tamper == "insert":
        lines.insert(4, lines[3])
    else:
        lines[4], lines[5] = lines[5], lines[4]
    path.write_bytes(b"".join(lines))

    report = verify_audit([path])

    # a changed record shows at the next one; a removed, inserted or moved one where it is
    assert report.bad is not None and report.bad.startswith(f"{path}:{6 if tamper == 'change' else 5}: ")
    done = subprocess.run([str(Path(sys.executable).with_name("thaw")), "audit", "verify", str(path)],
                          check=False, capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: the audit log was altered: {report.bad}")
    path.write_bytes(b"".join(audit_lines(path)[:3]))  # what was intact before it verifies
    ok = subprocess.run([str(Path(sys.executable).with_name("thaw")), "audit", "verify", str(path)],
                        check=False, capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"})
    assert ok.returncode == 0 and "ok 3 records" in ok.stdout


def test_canary_differences_name_the_paths():
    assert differences({"t": [1, 2, 3], "s": "x"}, {"t": [1, 5, 3], "s": "x"}) == ["$.t[1]: expected 2, got 5"]
    assert differences({"a": 1}, {"b": 1}) == ["$.a: missing in the restored output",
                                               "$.b: not in the recorded output"]
    assert differences([1, 2], [1]) == ["$: expected 2 items, got 1"]
    assert differences(1, 1.0) == ["$: expected 1, got 1.0"]
    assert differences({"x": 1}, {"x": 1}) == []


def test_the_agent_never_replaces_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    """Before: `--socket PATH` unlinked whatever was at PATH (a config file, a typo'd path)."""
    from thaw.agent.server import _unix_socket
    from thaw.errors import ConfigError

    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")

    with pytest.raises(ConfigError, match="exists and is not a socket: refusing to replace it"):
        _unix_socket(precious, None)

    assert precious.read_text() == "keep me"


def test_the_agent_replaces_a_socket_a_killed_agent_left(tmp_path: Path) -> None:
    import socket as _socket

    from thaw.agent.server import _unix_socket

    path = tmp_path / "agent.sock"
    left = _socket.socket(_socket.AF_UNIX)
    left.bind(str(path))
    left.close()  # bound, never listening: what a SIGKILLed agent leaves

    sock = _unix_socket(path, None)
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    finally:
        sock.close()
