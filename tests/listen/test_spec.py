"""ParkAtListen: what counts as a bind to park at, how it travels in the environment, and its refusals."""

from __future__ import annotations

import socket

import pytest

from thaw.listen.spec import ParkAtListen, describe


def test_by_default_any_tcp_listener_matches_and_nothing_else() -> None:
    spec = ParkAtListen()
    assert spec.matches(socket.AF_INET, socket.SOCK_STREAM, ("0.0.0.0", 8000))
    assert spec.matches(socket.AF_INET6, socket.SOCK_STREAM, ("::", 8000, 0, 0))
    assert not spec.matches(socket.AF_INET, socket.SOCK_DGRAM, ("0.0.0.0", 8000)), "UDP listens to nobody"
    assert not spec.matches(socket.AF_UNIX, socket.SOCK_STREAM, "/tmp/pymp-x/listener"), "multiprocessing's own"


def test_a_port_or_a_path_narrows_the_match() -> None:
    assert ParkAtListen(port=8000).matches(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 8000))
    assert not ParkAtListen(port=8000).matches(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 8001))
    assert ParkAtListen(path="/run/app.sock").matches(socket.AF_UNIX, socket.SOCK_STREAM, "/run/app.sock")
    assert ParkAtListen(path="@engine").matches(socket.AF_UNIX, socket.SOCK_STREAM, b"\0engine")
    assert not ParkAtListen(path="/run/app.sock").matches(socket.AF_INET, socket.SOCK_STREAM, ("0.0.0.0", 80))


def test_addresses_are_spelled_as_urls() -> None:
    assert describe(socket.AF_INET, ("", 8000)) == "tcp://0.0.0.0:8000"
    assert describe(socket.AF_INET6, ("::1", 8000, 0, 0)) == "tcp://[::1]:8000"
    assert describe(socket.AF_UNIX, "/run/app.sock") == "unix:///run/app.sock"
    assert describe(socket.AF_UNIX, "\0engine") == "unix:@engine"


def test_the_spec_travels_through_the_environment_unchanged() -> None:
    spec = ParkAtListen(port=9000, nth=2, min_warmup_s=30, expect_gpu="yes")
    assert ParkAtListen.from_env(spec.to_env()) == spec


@pytest.mark.parametrize("fields, message", [
    ({"port": 8000, "path": "/x"}, "not both"),
    ({"port": 70000}, "port must be 1-65535"),
    ({"path": "relative.sock"}, "must be absolute"),
    ({"nth": 0}, "nth must be 1 or more"),
    ({"min_warmup_s": -1}, "min_warmup_s"),
    ({"expect_gpu": "maybe"}, "auto, yes, no"),
])
def test_bad_values_are_refused_with_the_reason(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        ParkAtListen(**fields)


def test_an_environment_value_with_unknown_fields_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fields: colour"):
        ParkAtListen.from_env('{"colour": "blue"}')
    with pytest.raises(ValueError, match="not JSON"):
        ParkAtListen.from_env("{")


def test_the_agent_and_the_cli_refuse_a_bad_park_spec_with_the_reason() -> None:
    from pydantic import ValidationError
    from typer.testing import CliRunner

    from thaw.agent.models import LaunchRequest
    from thaw.cli.main import app

    ok = LaunchRequest(name="app", argv=["python"], park_at_listen={"port": 8000})
    assert ok.park_at_listen == ParkAtListen(port=8000)
    with pytest.raises(ValidationError, match="port must be 1-65535"):
        LaunchRequest(name="app", argv=["python"], park_at_listen={"port": 0})
    out = CliRunner().invoke(app, ["run", "--name", "app", "--park-port", "70000", "--", "python"])
    assert out.exit_code == 2 and "--park-at-listen: port must be 1-65535, got 70000" in out.output
