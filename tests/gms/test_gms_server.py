"""The service as a process: fds between real processes, holds tied to connections, restarts, hostile frames."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gms_helpers import ServiceProcess, fd_count, torch, write_model

import thaw.memory.weights as weights
from thaw.errors import GmsError, GmsUnavailable
from thaw.gms import Client, WeightSpec
from thaw.gms.plan import describe

READER = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from safetensors.torch import load_file
    import thaw.memory.weights as weights
    ws = weights.load([sys.argv[1]], device="memfd:t", gms_dir=Path(sys.argv[2]))
    want = load_file(sys.argv[1])
    def same():
        return all(torch.equal(ws.tensor(k), v) for k, v in want.items())
    print("mapped", same(), flush=True)
    sys.stdin.readline()          # the test kills the service meanwhile
    print("after", same(), flush=True)
""")


def test_a_worker_keeps_its_weights_when_the_service_dies_and_a_new_service_serves_again(
        tmp_path: Path, model_dir: Path) -> None:
    svc = ServiceProcess(tmp_path / "gms", model_dir)
    path = str(model_dir / "m.safetensors")
    script = tmp_path / "reader.py"
    script.write_text(READER)
    worker = subprocess.Popen([sys.executable, str(script), path, str(tmp_path / "gms")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().split() == ["mapped", "True"]
        svc.kill()
        worker.stdin.write("\n")
        worker.stdin.flush()
        assert worker.stdout.readline().split() == ["after", "True"]  # mapped memory outlives its exporter
        assert worker.wait(30) == 0
    finally:
        worker.kill()
    again = ServiceProcess(tmp_path / "gms", model_dir)  # replaces the dead service's socket
    try:
        ws = weights.load([path], device="memfd:t", gms_dir=tmp_path / "gms")
        assert torch.equal(ws.tensor("norm"), write_model(tmp_path / "ref.safetensors")["norm"])
    finally:
        again.stop()


def test_a_live_service_is_never_replaced(service: ServiceProcess, model_dir: Path) -> None:
    second = subprocess.run([sys.executable, "-m", "thaw", "gms", "serve", "--gpu", "memfd:t", "--allow",
                             str(model_dir), "--dir", str(service.gms_dir)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert "already listens" in second.stderr and "Traceback" not in second.stderr
    assert service.proc.poll() is None


def test_a_client_that_goes_away_releases_its_hold(service: ServiceProcess, model_dir: Path) -> None:
    spec = WeightSpec(files=describe([str(model_dir / "m.safetensors")]))
    client = Client(service.sock)
    layout, fds = client.acquire(spec)
    for fd in fds:
        import os

        os.close(fd)
    with Client(service.sock) as other:
        assert other.status().sets[0].holders == 1
        with pytest.raises(GmsError, match="mapped by 1 worker"):
            other.evict(layout.key)
        client.close()
        # the service notices the closed connection on its next read; poll its status until it does
        import time

        deadline = time.monotonic() + 10
        while other.status().sets[0].holders and time.monotonic() < deadline:
            time.sleep(0.02)
        assert other.evict(layout.key).key == layout.key


def test_unmap_and_remap_leave_no_descriptor_behind(service: ServiceProcess, model_dir: Path) -> None:
    path = str(model_dir / "m.safetensors")
    before = fd_count()
    ws = weights.load([path], device="memfd:t", gms_dir=service.gms_dir)
    address = ws.va
    expected = ws.tensor("layers.1.k").clone()
    weights.unmap_all()
    assert fd_count() == before and not ws.mapped  # no connection, no memfd: nothing for CRIU to dump
    weights.remap_all()
    assert ws.va == address and torch.equal(ws.tensor("layers.1.k"), expected)
    weights.unmap_all()
    assert fd_count() == before


def test_a_worker_that_still_maps_imported_memory_is_refused_at_the_freeze(service: ServiceProcess,
                                                                            model_dir: Path) -> None:
    from thaw.cuda import worker_hooks
    from thaw.worker import hooks

    worker_hooks.install()  # registered first, like a worker that installs it before loading its weights
    ws = weights.load([str(model_dir / "m.safetensors")], device="memfd:t", gms_dir=service.gms_dir)
    report = hooks.run_freeze(hooks.HookContext("snapshot"))  # the check runs after the weights hook unmapped
    assert report[weights.HOOK]["sets"][0]["key"] == ws.layout.key and not ws.mapped
    hooks.run_thaw(hooks.HookContext("thaw"))
    assert ws.mapped
    hooks._freeze[:] = [h for h in hooks._freeze if h.name != weights.HOOK]  # a worker that forgot to unmap
    with pytest.raises(hooks.HookFailed, match="imported from another process"):
        hooks.run_freeze(hooks.HookContext("snapshot"))


def test_no_service_and_a_refusing_service_are_told_apart(tmp_path: Path, service: ServiceProcess,
                                                          model_dir: Path) -> None:
    with pytest.raises(GmsUnavailable, match="no GPU memory service answers"):
        weights.load([str(model_dir / "m.safetensors")], device="memfd:other", gms_dir=service.gms_dir)
    outside = tmp_path / "outside.safetensors"
    write_model(outside)
    with pytest.raises(GmsError, match="outside the directories") as err:
        weights.load([str(outside)], device="memfd:t", gms_dir=service.gms_dir)
    assert err.value.code == "forbidden"


@pytest.mark.parametrize("frame", [
    struct.pack("!I", 1 << 30),                      # an absurd length
    struct.pack("!I", 5) + b"hello",                 # not JSON
    struct.pack("!I", 2) + b"[]",                    # not an object
])
def test_hostile_frames_drop_the_connection_not_the_service(service: ServiceProcess, frame: bytes) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(service.sock))
    s.sendall(frame)
    s.settimeout(10)
    assert s.recv(1) == b""  # closed by the service
    s.close()
    with Client(service.sock) as c:
        assert c.status().device == "memfd:t"


def test_an_invalid_request_gets_a_typed_refusal(service: ServiceProcess) -> None:
    from thaw.gms import wire

    with Client(service.sock) as c:
        assert c.sock is not None
        wire.send(c.sock, {"op": "acquire", "spec": {"files": [{"path": "relative", "size": 1}]}})
        body, fds = wire.recv(c.sock)
        assert fds == [] and body["ok"] is False and body["error"]["code"] == "bad_request"
        assert "absolute path" in body["error"]["message"]
