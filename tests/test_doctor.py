"""``thaw doctor``: each check says what is wrong and a fix that applies here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from thaw import doctor
from thaw.doctor import _thp

THAW = Path(sys.executable).with_name("thaw")


def test_a_working_compiler_and_python_headers_pass() -> None:
    # setup.sh installs both (g++, python3-dev): torch.compile needs them
    assert doctor._compiler().ok, doctor._compiler()
    assert doctor._python_headers().ok, doctor._python_headers()


def test_a_missing_compiler_is_named_with_the_package_that_brings_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-c++")

    got = doctor._compiler()

    assert (got.ok, got.detail) == (False, "no-such-c++ not found")
    assert "apt-get install g++" in got.fix


def test_a_compiler_that_cannot_compile_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "false")  # found, runs, compiles nothing

    got = doctor._compiler()

    assert not got.ok and "cannot compile" in got.detail


def test_missing_python_headers_are_named_with_the_package_that_brings_them(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    monkeypatch.setattr(doctor.sysconfig, "get_path", lambda name: str(tmp_path))

    got = doctor._python_headers()

    assert (got.ok, got.detail) == (False, f"no {tmp_path / 'Python.h'}")
    assert "python3-dev" in got.fix


@pytest.mark.criu
def test_without_proc_doctor_shows_criu_s_own_error_and_says_to_mount_proc() -> None:
    # a chroot entered without /proc mounted: the same, made by unmounting /proc in a mount namespace of our own
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", 'umount -l /proc && exec "$@"',
                           "sh", str(THAW), "doctor"], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "COLUMNS": "400"})

    assert done.returncode == 1, done.stdout + done.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
            for line in done.stdout.splitlines() if line.startswith("│")}
    mark, detail, fix = rows["criu check"]
    assert mark == "FAIL" and detail.startswith("criu check failed: ") and "(no message)" not in detail
    assert "/proc" in detail  # CRIU's own line: it cannot open what it needs under /proc
    assert fix.startswith("mount it: mount -t proc proc /proc")
    assert rows["kernel"][2] == rows["capabilities"][2] == fix
    assert "Traceback" not in done.stdout + done.stderr


def _doctor_rows(shell: str, tmp_path: Path) -> dict[str, list[str]]:
    """``thaw doctor``'s table, run by ``shell`` as pid 1 of new pid and mount namespaces ($THAW: the command)."""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
                           "sh", "-c", shell], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "COLUMNS": "400", "THAW": str(THAW), "ROOT": str(tmp_path)})
    assert "Traceback" not in done.stdout + done.stderr
    return {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
            for line in done.stdout.splitlines() if line.startswith("│")}


@pytest.mark.criu
def test_inside_a_chroot_doctor_says_to_pivot_root_instead(tmp_path: Path) -> None:
    # a snapshot would fail late, after the warm-up: "The root task has another root than mntns"
    # pid 1 (this shell) keeps the namespace's root; doctor runs in a chroot beside it
    rows = _doctor_rows('mount --rbind / "$ROOT" && chroot "$ROOT" "$THAW" doctor; exit $?', tmp_path)

    mark, detail, fix = rows["root directory"]
    assert (mark, detail) == ("FAIL", "/ is a chroot, not the root of this mount namespace")
    assert fix.startswith("enter the root with pivot_root, not chroot")


@pytest.mark.criu
def test_at_the_root_of_its_mount_namespace_doctor_passes_the_root_check(tmp_path: Path) -> None:
    rows = _doctor_rows('exec "$THAW" doctor', tmp_path)

    assert rows["root directory"][:2] == ["ok", "the mount namespace's root"]


@pytest.mark.parametrize(("content", "mode", "fix"), [
    ("always [madvise] never\n", "madvise", True),
    ("[always] madvise never\n", "always", False),
    ("always madvise [never]\n", "never", True),
])
def test_the_huge_page_row_names_the_mode_and_its_fix(tmp_path: Path, content: str, mode: str, fix: bool) -> None:
    knob = tmp_path / "enabled"
    knob.write_text(content)
    check = _thp(str(knob))
    assert check.ok and not check.required
    assert f"THP {mode}" in check.detail
    assert ("--thp always" in check.fix) is fix


def test_a_host_without_thp_is_not_a_failure(tmp_path: Path) -> None:
    check = _thp(str(tmp_path / "missing"))
    assert check.ok and "not available" in check.detail


@pytest.mark.criu
def test_the_ipv4_row_says_whether_this_criu_dumps_a_tcp_socket_here() -> None:
    from thaw.criu import find_criu

    criu = find_criu()
    row = doctor._ipv4_sockets(criu)

    assert row.name == "ipv4 sockets" and not row.required  # a warning: workers without sockets snapshot fine
    kernel = tuple(int(x) for x in os.uname().release.split(".")[:2])
    if criu.version == "4.1.1" and kernel >= (6, 16):  # criu#2705: this development machine and CI
        assert not row.ok
        assert "Can't get 1:16 opt" in row.detail and "criu#2705" in row.fix
    else:
        assert row.ok, row.detail


def test_the_worker_user_row_names_the_user_and_what_criu_needs_for_it(tmp_path: Path) -> None:
    from thaw.config import Settings
    from thaw.sandbox.user import can_dump_other_users

    assert doctor._worker_user(Settings(home=tmp_path)).ok
    row = doctor._worker_user(Settings(home=tmp_path, worker_user="65534"))
    assert "uid 65534, gid 65534, no capabilities" in row.detail
    assert row.ok == can_dump_other_users()
    if not row.ok:
        assert "CAP_SYS_RESOURCE" in row.detail and row.required
