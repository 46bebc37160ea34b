"""A real sandbox: the worker is pid 1 of new pid, mount and network namespaces, sees only its kept mounts,
and finds its control directory through the namespace link."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from thaw.errors import ConfigError
from thaw.sandbox.launch import child_env, launch
from thaw.sandbox.layout import plan
from thaw.worker import protocol
from workers import wait_until

pytestmark = pytest.mark.criu  # needs root for the namespaces

REPORT = """
import json, os, socket, fcntl, struct
from thaw.worker.protocol import sandbox_key
flags = struct.unpack("16sH14s", fcntl.ioctl(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 0x8913,
                      struct.pack("16sH14s", b"lo", 0, b"")))[1]
facts = {
    "pid": os.getpid(),
    "sid": os.getsid(0),
    "pidns": os.stat("/proc/self/ns/pid").st_ino,
    "netns": os.stat("/proc/self/ns/net").st_ino,
    "mounts": sorted({line.split()[4] for line in open("/proc/self/mountinfo")}),
    "proc_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "lo_up": bool(flags & 1),
    "control_dir": os.readlink(os.path.join(os.environ["THAW_RUN_DIR"], "ns", sandbox_key())),
    "stdin": os.readlink("/proc/self/fd/0"),
    "onednn": os.environ.get("ONEDNN_MAX_CPU_ISA"),
}
open(os.path.join(os.environ["OUT"], "facts.json"), "w").write(json.dumps(facts))
print("reported", flush=True)
"""


def test_a_launched_worker_lives_in_its_own_namespaces(tmp_path: Path) -> None:
    control, run = tmp_path / "control", tmp_path / "run"
    control.mkdir()
    lay = plan([tmp_path, sys.prefix])
    env = child_env({**os.environ, "OUT": str(tmp_path)}, run_dir=run, name="probe")

    started = launch([sys.executable, "-c", REPORT], control_dir=control, run_dir=run, layout=lay, env=env,
                     cwd=tmp_path)
    try:
        facts = json.loads(wait_until(lambda: (tmp_path / "facts.json").exists() and
                                      (tmp_path / "facts.json").read_text(), 10, "the sandbox's report"))
    finally:  # the worker exits after reporting; its `unshare` holder is our child: reap it
        wait_until(lambda: os.waitpid(started.holder_pid, os.WNOHANG)[0], 10, "the sandbox to end")

    assert started.pidns != protocol.pidns_inode()
    assert facts["pid"] == 1 and facts["sid"] == 1  # pid 1, session leader (CRIU refuses an outside session)
    assert facts["pidns"] == started.pidns
    assert facts["netns"] != os.stat("/proc/self/ns/net").st_ino
    assert facts["lo_up"]
    assert facts["proc_pids"] == [1]  # /proc is this namespace's own
    assert set(facts["mounts"]) == {"/", "/proc", *lay.keep, *(["/dev/shm"] if lay.private_shm else [])}
    assert facts["control_dir"] == str(control)
    assert facts["stdin"] == "/dev/null"
    assert facts["onednn"] == "AVX512_CORE_BF16"  # AMX is off for restored torch workers (SIGILL otherwise)
    assert "reported" in (control / protocol.WORKER_LOG).read_text()  # stdout goes to the worker log


@pytest.mark.parametrize("command", ["/no/such/worker", "no-such-command-on-path"])
def test_a_command_that_cannot_start_fails_the_launch_naming_it(tmp_path: Path, command: str) -> None:
    """Before: launch returned as soon as the sandbox existed, `thaw run` said "started" and exited 0."""
    control, run = tmp_path / "control", tmp_path / "run"
    control.mkdir()

    with pytest.raises(ConfigError) as failed:
        launch([command], control_dir=control, run_dir=run, layout=plan([tmp_path]),
               env=child_env(dict(os.environ), run_dir=run, name="x"), cwd=tmp_path)

    assert failed.value.message == f"command: cannot start {command!r}: No such file or directory"
    assert "full path" in failed.value.hint
    assert f"cannot exec {command!r}" in (control / protocol.WORKER_LOG).read_text()
