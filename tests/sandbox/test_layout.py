"""Sandbox layout planning: which mounts a worker keeps, and how CRIU is told about them.

One Layout serves launch and restore; what dump marks external, restore must bind
back under the same key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw import proc
from thaw.sandbox import layout
from thaw.model import SandboxLayout as Layout
from thaw.sandbox.layout import plan

HOST = ["/", "/proc", "/sys", "/dev", "/dev/shm", "/dev/pts", "/sys/fs/cgroup", "/data", "/data/models", "/opt/venv",
        "/usr/local/nvidia"]


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "host_mountpoints", lambda: list(HOST))


def test_a_worker_keeps_the_base_mounts_and_those_its_paths_live_on(host: None) -> None:
    got = plan(["/data/models/llama/weights.bin", "/opt/venv/bin/python", "/home/me/work"])

    # /data holds the kept /data/models: trimming it would detach /data/models too
    assert got.keep == ["/data", "/data/models", "/dev", "/opt/venv", "/sys", "/usr/local/nvidia"]
    assert got.private_net is True
    assert got.private_shm is True  # the worker gets a /dev/shm of its own, dumped with it


def test_every_mount_above_a_kept_one_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # a tmpfs /tmp with a node's bind mount inside, itself with a nested mount (the agent tests' layout)
    monkeypatch.setattr(layout, "host_mountpoints",
                        lambda: ["/", "/proc", "/dev", "/sys", "/tmp", "/tmp/n", "/tmp/n/home", "/tmp/other"])

    got = plan(["/tmp/n/home/instances/w"])

    assert got.keep == ["/dev", "/sys", "/tmp", "/tmp/n", "/tmp/n/home"]  # /tmp/other is still trimmed
    assert "mnt[/tmp]:thaw_tmp" in got.dump_externals()  # the host's, bound back on restore


def test_the_host_s_dev_shm_is_kept_when_thaw_s_paths_live_on_it(host: None) -> None:
    got = plan(["/dev/shm/thaw-home"])

    assert "/dev/shm" in got.keep and got.private_shm is False
    assert "mnt[/dev/shm]:thaw_dev_shm" in got.dump_externals()


def test_paths_on_the_root_or_proc_add_no_mount(host: None) -> None:
    assert plan(["/tmp/x", "/proc/self/status"]).keep == ["/dev", "/sys", "/usr/local/nvidia"]


def test_extra_mounts_are_kept_only_when_they_exist(host: None) -> None:
    got = plan([], ["/data", "/not/mounted"])

    assert "/data" in got.keep and "/not/mounted" not in got.keep


def test_optional_mounts_are_left_out_where_the_host_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "host_mountpoints", lambda: ["/", "/proc", "/dev", "/sys"])

    assert plan(["/anything"]).keep == ["/dev", "/sys"]


def test_the_deepest_mountpoint_wins() -> None:
    mounts = {"/", "/data", "/data/models"}

    assert layout.mountpoint_of(Path("/data/models/a/b"), mounts) == "/data/models"
    assert layout.mountpoint_of(Path("/data/other"), mounts) == "/data"
    assert layout.mountpoint_of(Path("/elsewhere"), mounts) == "/"


def test_symlinks_are_followed_to_the_mount_they_point_into(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")

    assert layout.mountpoint_of(tmp_path / "link" / "f", {"/", str(tmp_path / "real")}) == str(tmp_path / "real")


def test_mountinfo_escapes_are_decoded(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("22 1 8:1 / / rw - ext4 /dev/vda rw\n"
                    "23 22 0:5 / /mnt/with\\040space rw - tmpfs tmpfs rw\n")

    assert layout.host_mountpoints(str(info)) == ["/", "/mnt/with space"]


def test_the_root_mount_is_the_top_one_at_slash_or_none(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("22 1 8:1 / / rw - ext4 /dev/vda rw\n"
                    "31 22 8:1 /srv/root / rw - ext4 /dev/vda rw\n"  # a root bound on top of it
                    "23 31 0:5 / /tmp rw - tmpfs tmpfs rw\n")
    assert proc.root_mount_id(str(info)) == "31"

    info.write_text("23 31 0:5 / /tmp rw - tmpfs tmpfs rw\n")  # a chroot into a plain directory
    assert proc.root_mount_id(str(info)) is None


def test_the_real_host_plan_keeps_what_this_interpreter_needs() -> None:
    import sys

    got = plan([sys.prefix])

    mounts = set(layout.host_mountpoints())
    assert set(got.keep) <= mounts
    assert {"/", "/proc"}.isdisjoint(got.keep)
    assert layout.mountpoint_of(Path(sys.prefix), mounts) in {*got.keep, "/"}


def test_dump_and_restore_name_the_same_external_mounts() -> None:
    lay = Layout(keep=["/dev", "/sys", "/usr/local/nvidia", "/data:x"])

    assert lay.external() == ["/dev", "/usr/local/nvidia", "/data:x"]  # /sys is recreated by CRIU, not bound
    assert lay.dump_externals() == ["mnt[/dev]:thaw_dev", "mnt[/usr/local/nvidia]:thaw_usr_local_nvidia",
                                    "mnt[/data:x]:thaw_data_x"]
    assert lay.restore_externals() == ["mnt[thaw_dev]:/dev", "mnt[thaw_usr_local_nvidia]:/usr/local/nvidia",
                                       "mnt[thaw_data_x]:/data:x"]


def test_keys_are_free_of_criu_s_separators() -> None:
    for mountpoint in ("/a:b/c", "/x/y:z"):
        key = Layout.key(mountpoint)
        assert "/" not in key and ":" not in key


def test_a_layout_survives_the_manifest() -> None:
    lay = Layout(keep=["/dev", "/opt"], private_net=False)

    assert Layout.model_validate(lay.model_dump()) == lay
    assert Layout.model_validate({}) == Layout(keep=[], private_net=True)  # an older manifest without the fields


@pytest.mark.parametrize(("text", "expected"), [("65534", (65534, 65534)), ("nobody", (65534, 65534)),
                                                ("65534:100", (65534, 100)), ("1234", (1234, 1234))])
def test_the_worker_user_is_read_as_name_uid_or_uid_gid(text: str, expected: tuple[int, int]) -> None:
    from thaw.config import WorkerUser

    assert (WorkerUser.parse(text).uid, WorkerUser.parse(text).gid) == expected


@pytest.mark.parametrize(("text", "message"), [("root", "must not be root"), ("0", "must not be root"),
                                               ("no-such-user-here", "no user named")])
def test_a_worker_user_that_cannot_be_is_a_clear_settings_error(text: str, message: str) -> None:
    from pydantic import ValidationError

    from thaw.config import Settings

    with pytest.raises(ValidationError, match=message):
        Settings(worker_user=text)
