"""Workers as an unprivileged user (THAW_WORKER_USER): launched, snapshotted and restored with real CRIU, still
that user with no capability, and unable to write anything of thaw's."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from thaw import pipeline
from thaw.agent.audit import AuditLog
from thaw.config import Settings
from thaw.errors import CheckpointError
from thaw.sandbox.user import can_dump_other_users
from thaw.store import open_store
from workers import SERVE, client, stop_everything

pytestmark = pytest.mark.criu

NOBODY = 65534
SRC = Path(__file__).resolve().parents[2] / "src"
#: an interpreter the unprivileged user can execute (the test venv's may live under root's 0700 home)
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


@pytest.fixture
def home() -> Iterator[Path]:
    """A thaw home the worker user can reach (pytest's tmp_path lies under a 0700 directory)."""
    root = Path(tempfile.mkdtemp(prefix="thaw-user-"))
    root.chmod(0o755)
    yield root
    stop_everything(root / "home")
    shutil.rmtree(root, ignore_errors=True)


def creds(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {"uid": status["Uid"].split()[0], "gid": status["Gid"].split()[0], "groups": status["Groups"].strip(),
            "cap_eff": status["CapEff"], "cap_prm": status["CapPrm"], "cap_bnd": status["CapBnd"],
            "no_new_privs": status["NoNewPrivs"]}


UNPRIVILEGED = {"uid": str(NOBODY), "gid": str(NOBODY), "groups": "", "cap_eff": "0" * 16, "cap_prm": "0" * 16,
                "cap_bnd": "0" * 16, "no_new_privs": "1"}


def test_a_worker_user_is_launched_snapshotted_and_restored_unprivileged(home: Path) -> None:
    settings = Settings(home=home / "home", store=str(home / "home" / "artifacts"), worker_user=f"{NOBODY}")
    store = open_store(settings.store_url)
    AuditLog(settings.home / "agent" / "audit.log").record("start", "succeeded")  # the agent's state, as it has it
    work = home / "work"
    work.mkdir()
    work.chmod(0o777)  # the worker's own working directory
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC), "TEST_LOG": str(work / "data.log")}
    original = pipeline.launch(settings, [PYTHON, str(SERVE)], name="w", env=env, cwd=work)
    pipeline.wait_ready(settings, original, timeout=60)
    assert creds(original.host_pid) == UNPRIVILEGED

    if not can_dump_other_users():
        # this host's root lacks CAP_SYS_RESOURCE (a sandboxed VM): CRIU could not read the worker's limits.
        # thaw says so before the freeze, and the worker goes on unharmed
        with pytest.raises(CheckpointError) as refused:
            pipeline.snapshot(settings, "w", "a1", store=store, leave_running=True)
        assert "needs CAP_SYS_RESOURCE" in refused.value.message and "nothing was frozen" in refused.value.hint
        pipeline.release(settings, "w")
        with client(original.dir) as http:
            assert not http.post("/try-write", content=str(settings.home / "agent" / "audit.log")).json()["written"]
        pytest.skip("CRIU needs CAP_SYS_RESOURCE to dump another user's worker; this host's root lacks it "
                    "(the launch, the credentials and the refusal were checked)")
    pipeline.snapshot(settings, "w", "a1", store=store, leave_running=True)
    copy = pipeline.restore(settings, "a1", store=store, name="copy").instance

    assert creds(copy.host_pid) == UNPRIVILEGED  # CRIU gave back exactly the original's credentials
    forbidden = [settings.home / "agent" / "audit.log", settings.home / "agent" / "jobs.db",
                 settings.home / "artifacts" / "a1" / "manifest.json", settings.home / "artifacts" / "planted",
                 settings.home / "instances" / "planted", copy.dir / "instance.json", original.dir / "ready.json",
                 settings.run_dir / "ns" / "planted", settings.staging_dir / "planted"]
    for worker in (original, copy):
        with client(worker.dir) as http:
            state = http.get("/state").json()
            for path in forbidden:
                tried = http.post("/try-write", content=str(path)).json()
                assert not tried["written"], f"{worker.name} could write {path}"
            own = http.post("/try-write", content=str(worker.dir / "scratch")).json()
        assert own["written"]  # its own control directory: its sockets and files go there
        assert state["token"] == (work / "data.log").read_text().split()[1]
    assert store.verify("a1").name == "a1"
    assert oct((settings.home / "agent").stat().st_mode & 0o777) == "0o700"
