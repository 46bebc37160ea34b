"""The park-at-listen hook in a real server process (binder.py knows nothing of thaw), driven as thaw drives it:
where it parks, what the server sees afterwards, which binds and processes never park, early binds, chaining."""

from __future__ import annotations

import os
import sys
import textwrap

from park_servers import answers, free_port

from thaw.listen.spec import ParkAtListen
from thaw.worker import protocol
from workers import wait_until


def test_the_server_parks_inside_its_bind_and_binds_once_released(start_server) -> None:
    port = free_port()
    server = start_server({"binds": [["tcp", "127.0.0.1", port]]})
    marker = server.ready()
    assert marker.serves == f"tcp://127.0.0.1:{port}"
    assert marker.pid == server.proc.pid
    assert answers(port) == "", "parked before the bind: nothing listens yet"
    # while parked, the socket's descriptor points at /dev/null: no inet socket for CRIU to dump
    fd_target = os.readlink(f"/proc/{server.proc.pid}/fd/3")
    assert fd_target == "/dev/null", fd_target
    server.send(protocol.Action.RELEASE)
    wait_until(lambda: answers(port), 10, "the server to serve after its release")
    assert answers(port) == f"ok {server.proc.pid}\n"
    [bound] = server.events()
    assert bound["fd"] == 3 and bound["fd_is"].startswith("socket:"), "the same descriptor is a socket again"
    assert bound["reuseaddr"] == 1 and bound["blocking"] is False, "options and flags set before the bind survive"
    assert not (server.dir / protocol.READY).exists()


def test_a_stop_while_parked_ends_the_server(start_server) -> None:
    server = start_server({"binds": [["tcp", "127.0.0.1", free_port()]]})
    server.ready()
    server.send(protocol.Action.STOP)
    assert server.proc.wait(10) == 0
    assert server.events() == [], "it never bound"


def test_only_the_nth_bind_of_the_chosen_port_parks(start_server) -> None:
    first, other, second = free_port(), free_port(), free_port()
    plan = {"binds": [["tcp", "127.0.0.1", other], ["tcp", "127.0.0.1", first], ["tcp", "127.0.0.1", second]]}
    server = start_server(plan, ParkAtListen(port=second, min_warmup_s=0, expect_gpu="no"))
    assert server.ready().serves == f"tcp://127.0.0.1:{second}"
    assert [e["bound"][2] for e in server.events()] == [other, first], "the other ports were bound on the way"

    third = start_server({"binds": [["tcp", "127.0.0.1", free_port()], ["tcp", "127.0.0.1", port := free_port()]]},
                         ParkAtListen(nth=2, min_warmup_s=0, expect_gpu="no"))
    assert third.ready().serves == f"tcp://127.0.0.1:{port}"
    assert len(third.events()) == 1


def test_a_unix_socket_path_parks_when_asked_for(start_server, tmp_path) -> None:
    path = str(tmp_path / "app.sock")
    server = start_server({"binds": [["tcp", "127.0.0.1", free_port()], ["unix", path]]},
                          ParkAtListen(path=path, min_warmup_s=0, expect_gpu="no"))
    assert server.ready().serves == f"unix://{path}"
    assert len(server.events()) == 1 and not os.path.exists(path)


def test_a_forked_child_never_parks_and_the_parent_does(start_server) -> None:
    child_port, port = free_port(), free_port()
    server = start_server({"child_binds": ["tcp", "127.0.0.1", child_port], "binds": [["tcp", "127.0.0.1", port]]})
    assert server.ready().pid == server.proc.pid
    wait_until(lambda: [e for e in server.events() if e["bound"][2] == child_port], 10, "the child's bind")
    [child] = server.events()
    assert child["pid"] != server.proc.pid


def test_a_bind_before_the_warm_up_is_reported_and_not_parked(start_server) -> None:
    port = free_port()
    server = start_server({"binds": [["tcp", "127.0.0.1", port]]}, ParkAtListen(min_warmup_s=30, expect_gpu="no"))
    report = wait_until(lambda: protocol.read_json(server.dir / protocol.PARK_REPORT), 20, "the early-listen report")
    assert report["state"] == "early" and report["serves"] == f"tcp://127.0.0.1:{port}"
    assert "minimum warm-up is 30 s" in report["reason"]
    wait_until(lambda: answers(port), 10, "the server to serve unparked")
    assert not (server.dir / protocol.READY).exists()


def test_a_bind_before_any_process_holds_a_gpu_is_early_where_a_gpu_is_expected(start_server) -> None:
    port = free_port()
    server = start_server({"binds": [["tcp", "127.0.0.1", port]]}, ParkAtListen(min_warmup_s=0, expect_gpu="yes"))
    report = wait_until(lambda: protocol.read_json(server.dir / protocol.PARK_REPORT), 20, "the early-listen report")
    assert "before any process of the worker holds a GPU" in report["reason"]


def test_the_users_own_sitecustomize_still_runs(start_server, tmp_path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sitecustomize.py").write_text(textwrap.dedent("""
        import os
        with open(os.environ["MINE_MARK"], "w") as f:
            f.write(__file__)
    """))
    mark = tmp_path / "mark"
    server = start_server({"binds": [["tcp", "127.0.0.1", free_port()]]}, PYTHONPATH=str(mine), MINE_MARK=str(mark))
    server.ready()
    assert mark.read_text() == str(mine / "sitecustomize.py")


def test_a_bad_spec_is_one_line_on_stderr_and_the_server_runs_unparked(tmp_path) -> None:
    import subprocess

    from thaw.listen import launch

    env = {**os.environ, **launch.worker_env(ParkAtListen(), tmp_path / "run", dict(os.environ))}
    env["THAW_PARK_AT_LISTEN"] = '{"nth": 0}'
    out = subprocess.run([sys.executable, "-c", "print('served')"], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.stdout == "served\n"
    assert "thaw: not parking: nth must be 1 or more, got 0" in out.stderr


def test_a_parked_server_gets_asyncio_instead_of_uvloop_whose_io_uring_criu_cannot_dump(tmp_path) -> None:
    import subprocess

    from thaw.listen.launch import worker_env

    fake = tmp_path / "site" / "uvloop"  # an installed uvloop, as far as the import system can tell
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("VERSION = 'installed'\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    env.update(worker_env(ParkAtListen(min_warmup_s=0, expect_gpu="no"), tmp_path / "run", env))
    probe = textwrap.dedent("""
        try:
            import uvloop
            print("imported", uvloop.VERSION)
        except ImportError as exc:
            print("refused", exc)
    """)

    kept_out = subprocess.run([sys.executable, "-c", probe], env=env, check=False, capture_output=True, text=True, timeout=60)
    assert kept_out.stdout.startswith("refused thaw keeps uvloop out"), kept_out.stdout + kept_out.stderr
    assert "io_uring" in kept_out.stdout and "THAW_PARK_KEEP_UVLOOP=1" in kept_out.stdout

    allowed = subprocess.run([sys.executable, "-c", probe], env={**env, "THAW_PARK_KEEP_UVLOOP": "1"},
                             check=False, capture_output=True, text=True, timeout=60)
    assert allowed.stdout.strip() == "imported installed", allowed.stdout + allowed.stderr
